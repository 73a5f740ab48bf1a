"""PPOTrainer: the PPO math on hand-computed cases, the advantage baselines (running, group, leave-one-out, greedy) by
hand, k completions per prompt aligned with their columns, the first minibatch (ratio 1, KL 0), standard PPO with a
value head and GAE (and its critic warm-up), λ1 during RL, evaluation by decoding and best-checkpoint selection, PEFT's
reference policy, reward plug-ins from the config, checkpoints."""

from __future__ import annotations

import copy
import errno
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from peft import get_peft_model_state_dict
from transformers import Trainer
from trl import TrlParser

from tippo_rl import TIPPoModel, load_artmuse, make_demo_dataset
from tippo_rl.checkpoints import CheckpointError, DiskFullError, check_checkpoint
from tippo_rl.data_collator import MODEL_INPUT_NAMES, model_inputs
from tippo_rl.lora import apply_lora
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.rewards import RewardError
from tippo_rl.script_arguments import TIPPoScriptArguments
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_math import (
    clipped_surrogate_loss,
    clipped_value_loss,
    completion_mask,
    generalized_advantage_estimation,
    greedy_baseline_advantages,
    group_advantages,
    kl_penalty,
    leave_one_out_advantages,
    masked_global_mean_std,
    token_log_probs,
)
from tippo_rl.trainer.ppo_trainer import PPOMinibatch, PPOTrainer
from tippo_rl.trainer.tippo_trainer import unwrap_tippo
from tippo_rl.trainer.value_head import PolicyAndValueModel


REPO = Path(__file__).resolve().parents[1]


def ppo_config(tmp_path: Path, **overrides) -> PPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        steps_per_generation=2,
        num_ppo_epochs=1,
        max_new_tokens=12,
        learning_rate=1e-3,
        reward_funcs=["literal"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def make_trainer(tmp_path, model, processor, dataset_dir, trainer_rewards=None, **overrides) -> PPOTrainer:
    train = load_artmuse(dataset_dir / "train.jsonl")
    return PPOTrainer(
        copy.deepcopy(model), ppo_config(tmp_path, **overrides), processor, train, reward_funcs=trainer_rewards
    )


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# -- the math, by hand --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6, 50), (2, 3, 3000), (2, 0, 50)], ids=["small", "large-vocabulary", "empty"])
def test_token_log_probs_are_the_log_softmax_of_the_sampled_tokens(shape, monkeypatch):
    """Chunked (a small `CHUNK_ELEMENTS`, so several chunks), at a temperature: log_softmax(x / T) at the token, as
    TRL's `selective_log_softmax`."""
    monkeypatch.setattr("tippo_rl.trainer.ppo_math.CHUNK_ELEMENTS", 1000)
    logits = torch.randn(*shape, dtype=torch.float64)
    ids = torch.randint(0, shape[-1], shape[:2])
    expected = (logits / 0.7).log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(token_log_probs(logits, ids, temperature=0.7), expected, atol=1e-12)


def test_a_ppo_minibatch_passes_the_trainers_input_preparation_untouched():
    """Under DeepSpeed bf16 the Trainer's input preparation casts every float tensor of a mapping; a `PPOMinibatch`
    (old log-probs, advantages) reaches `compute_loss` as it is, and reads like a dict there."""
    deepspeed = SimpleNamespace(hf_ds_config=SimpleNamespace(dtype=lambda: torch.bfloat16))
    trainer = SimpleNamespace(
        args=SimpleNamespace(device=torch.device("cpu")),
        is_deepspeed_enabled=True,
        accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=deepspeed)),
    )
    trainer._prepare_input = lambda data: Trainer._prepare_input(trainer, data)
    tensors = {"old_logps": torch.randn(2, 3), "advantages": torch.randn(2, 3)}
    assert Trainer._prepare_inputs(trainer, dict(tensors))["old_logps"].dtype == torch.bfloat16  # a dict is cast
    minibatch = PPOMinibatch(tensors)
    assert Trainer._prepare_inputs(trainer, minibatch) is minibatch
    assert dict(minibatch.items()) == tensors and list(minibatch) == list(tensors) and minibatch.get("values") is None


def test_clipped_surrogate_loss_on_a_hand_computed_case():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 7.0]])
    old_logps = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logps = old_logps + ratios.log()
    advantages = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last token is padding: ignored
    loss, clip_fraction, ratio = clipped_surrogate_loss(logps, old_logps, advantages, mask, cliprange=0.2)
    # token 1: max(−1·1.5, −1·1.2) = −1.2 (clipped); token 2: max(−0.5, −0.8) = −0.5; token 3: max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    torch.testing.assert_close(ratio, ratios)


def test_kl_estimators():
    logps, ref_logps = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    torch.testing.assert_close(kl_penalty(logps, ref_logps, "k1"), torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(kl_penalty(logps, ref_logps, "k3"), torch.tensor([[math.exp(-0.5) + 0.5 - 1, 0.0]]))
    assert (kl_penalty(torch.randn(50), torch.randn(50), "k3") >= 0).all()  # k3 is never negative


def test_gae_on_a_hand_computed_case():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])  # the sequence reward on the last completion token
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])  # 9.0 sits on padding and must not leak in
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages = generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=0.8)
    a2 = 1.0 - 0.7  # δ_2 = r_2 − V_2 (the episode ends)
    a1 = (0.9 * 0.7 - 0.6) + 0.9 * 0.8 * a2  # δ_1 + γλ·Â_2
    a0 = (0.9 * 0.6 - 0.5) + 0.9 * 0.8 * a1
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2, 0.0]]))


def test_clipped_value_loss_on_a_hand_computed_case():
    values, old_values = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    targets, mask = torch.tensor([[2.0, 1.0]]), torch.tensor([[1, 1]])
    loss, clip_fraction = clipped_value_loss(values, old_values, targets, mask, cliprange_value=0.2)
    # token 1: V moved 0.5 → clipped to 0.7: max((1 − 2)², (0.7 − 2)²) = 1.69; token 2: (0 − 1)² = 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)


def test_completion_mask_ends_at_the_first_eos():
    ids = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    assert completion_mask(ids, eos_token_id=1).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


# -- advantage baselines, by hand ----------------------------------------------------------------------

# Two prompts, k = 3 completions each (consecutive): returns 1, 2, 6 and 4, 4, 1.
GROUPED_RETURNS = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 1.0])


def test_group_baseline_by_hand():
    # Prompt 1: mean 3, unbiased std √((4 + 1 + 9) / 2) = √7. Prompt 2: mean 3, std √((1 + 1 + 4) / 2) = √3.
    expected = [
        -2 / math.sqrt(7),
        -1 / math.sqrt(7),
        3 / math.sqrt(7),
        1 / math.sqrt(3),
        1 / math.sqrt(3),
        -2 / math.sqrt(3),
    ]
    torch.testing.assert_close(group_advantages(GROUPED_RETURNS, k=3, epsilon=0.0), torch.tensor(expected))


@pytest.mark.parametrize(
    ("scale_rewards", "expected"),
    [
        ("none", [-2.0, -1.0, 3.0, 1.0, 1.0, -2.0]),  # Dr. GRPO: the group mean only
        # batch: the group mean, then the unbiased std of all six returns (mean 3: √((4 + 1 + 9 + 1 + 1 + 4) / 5) = 2)
        ("batch", [-1.0, -0.5, 1.5, 0.5, 0.5, -1.0]),
        (
            "group",
            [
                -2 / math.sqrt(7),
                -1 / math.sqrt(7),
                3 / math.sqrt(7),
                1 / math.sqrt(3),
                1 / math.sqrt(3),
                -2 / math.sqrt(3),
            ],
        ),
    ],
)
def test_group_baseline_scale_rewards_as_trl(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, scale_rewards, expected
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        use_value_head=False,
        advantage_baseline="group",
        num_generations=2,
        scale_rewards=scale_rewards,
        advantage_epsilon=1e-12,
    )
    assert trainer.args.whiten_advantages is False  # a per-prompt baseline is used as published
    trainer.args.num_generations = 3  # the hand-computed case has k = 3
    advantages = trainer.baseline_advantages(GROUPED_RETURNS, {})
    torch.testing.assert_close(advantages, torch.tensor(expected))


def test_whitening_defaults_to_gae_and_no_baseline_only(tmp_path):
    assert ppo_config(tmp_path).whiten_advantages is True  # GAE on a value head
    assert ppo_config(tmp_path, use_value_head=False).whiten_advantages is True  # `none`: the batch mean
    for baseline in ("running", "greedy"):
        assert ppo_config(tmp_path, use_value_head=False, advantage_baseline=baseline).whiten_advantages is False
    assert ppo_config(
        tmp_path, use_value_head=False, advantage_baseline="greedy", whiten_advantages=True
    ).whiten_advantages


def test_leave_one_out_baseline_by_hand():
    # 1 − (2 + 6)/2 = −3, 2 − (1 + 6)/2 = −1.5, 6 − (1 + 2)/2 = 4.5; 4 − (4 + 1)/2 = 1.5 (twice), 1 − 4 = −3.
    expected = torch.tensor([-3.0, -1.5, 4.5, 1.5, 1.5, -3.0])
    torch.testing.assert_close(leave_one_out_advantages(GROUPED_RETURNS, k=3), expected)


def test_greedy_baseline_by_hand():
    greedy = torch.tensor([2.5, 3.0])  # the greedy decode's return of each prompt
    expected = torch.tensor([-1.5, -0.5, 3.5, 1.0, 1.0, -2.0])
    torch.testing.assert_close(greedy_baseline_advantages(GROUPED_RETURNS, greedy, k=3), expected)


@pytest.mark.parametrize(
    ("baseline", "expected"),
    [
        ("none", [1.0, 2.0, 6.0, 4.0, 4.0, 1.0]),
        ("leave_one_out", [-3.0, -1.5, 4.5, 1.5, 1.5, -3.0]),
        ("greedy", [-1.5, -0.5, 3.5, 1.0, 1.0, -2.0]),
        ("running", [(g - 3.0) / (math.sqrt(10 / 3) + 1e-8) for g in (1.0, 2.0, 6.0, 4.0, 4.0, 1.0)]),  # μ 3, δ² 20/6
    ],
)
def test_trainer_puts_each_baselines_advantage_on_every_completion_token(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, baseline, expected
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        use_value_head=False,
        advantage_baseline=baseline,
        num_generations=2,
        per_device_train_batch_size=3,
    )
    trainer.args.num_generations = 3  # the hand-computed case has k = 3
    mask = torch.tensor([[1, 1, 0]] * 3 + [[1, 0, 0]] * 3)
    rollouts = {"completion_mask": mask, "greedy_returns": torch.tensor([2.5, 3.0])}
    advantages = trainer.compute_advantages(GROUPED_RETURNS, rollouts)
    torch.testing.assert_close(advantages, torch.tensor(expected)[:, None] * mask)


# -- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        (["--cliprange", "1.5"], "cliprange"),
        (["--kl_coef", "-0.1"], "kl_coef"),
        (["--kl_estimator", "k2"], "kl_estimator"),
        (["--lam", "1.5"], "lam"),
        (["--num_ppo_epochs", "0"], "num_ppo_epochs"),
        (["--temperature", "0"], "temperature"),
        (["--reward_funcs", "literal", "--reward_weights", "1", "2"], "reward_weights"),
        (["--generation_batch_size", "6", "--per_device_train_batch_size", "4"], "generation_batch_size"),
        (["--total_iterations", "10", "--max_steps", "5"], "total_iterations"),
        (["--num_generations", "3"], "num_generations"),  # 4 × 2 rollouts per process: not whole groups of 3
        (["--advantage_baseline", "mean"], "advantage_baseline"),
        (["--advantage_baseline", "group", "--use_value_head", "false"], "num_generations"),  # k = 1
        (["--advantage_baseline", "leave_one_out", "--num_generations", "2"], "use_value_head"),
        (["--value_warmup_iterations", "2", "--use_value_head", "false"], "value_warmup_iterations"),
        (["--value_head_init", "random"], "value_head_init"),
        (["--daa_lambda_schedule", "cosine"], "daa_lambda_schedule"),
        (["--eval_max_samples", "0"], "eval_max_samples"),
        (["--eval_tokenize", "words"], "eval_tokenize"),
        (["--scale_rewards", "std"], "scale_rewards"),
        # TrainingArguments' own numbers, which used to fail inside the optimizer or the sampler with a traceback
        (["--learning_rate", "-1"], "learning_rate"),
        (["--per_device_train_batch_size", "-2"], "per_device_train_batch_size"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
        (["--adam_beta2", "1.5"], "adam_beta2"),
        (["--max_grad_norm", "-1"], "max_grad_norm"),
        (["--warmup_ratio", "2"], "warmup_ratio"),
    ],
)
def test_bad_config_values_fail_at_parse_time_naming_the_field(tmp_path, arguments, field):
    parser = TrlParser((TIPPoScriptArguments, PPOConfig, TIPPoModelConfig))
    with pytest.raises(ValueError, match=field):
        parser.parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", *arguments])


def test_rollout_batch_and_iteration_sizes(tmp_path):
    args = ppo_config(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        steps_per_generation=None,
        num_ppo_epochs=3,
        max_steps=-1,
        total_iterations=5,
    )
    assert args.steps_per_generation == 2 and args.generation_batch_size == 8
    assert args.minibatches_per_iteration == 6
    assert args.max_steps == 15  # 5 iterations × 6 minibatches / 2 accumulation steps
    assert args.bf16 is False  # no GPU here


# -- training -----------------------------------------------------------------------------------------


def test_log_probs_are_the_sampling_distributions_at_the_temperature(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(
        tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir, temperature=0.7
    )
    rows = [trainer.train_dataset[i] for i in range(3)]
    forward_inputs = model_inputs(trainer.data_collator(rows))
    completion_ids = torch.randint(0, trainer.model.config.vocab_size, (3, 5))
    logps, logits, _ = trainer._forward(trainer.model, forward_inputs, completion_ids)
    naive = (logits / 0.7).log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(logps, naive)
    assert logps.dtype == torch.float32 and logps.shape == (3, 5)


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=1.0),
        dict(temperature=0.7),
        dict(top_k=5),
        dict(top_p=0.8),
        dict(temperature=1.3, top_k=4, top_p=0.9),
    ],
)
def test_ratio_log_probs_are_those_generate_sampled_from(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, settings
):
    """generate()'s own processed scores (temperature, top-k, top-p applied) give the log-probability of each sampled
    token; the trainer's teacher-forced log-probs must equal them, for every sampling setting."""
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        use_value_head=False,
        **settings,
    )
    rows = [trainer.train_dataset[i] for i in range(4)]
    inputs = model_inputs(trainer.data_collator(rows))
    torch.manual_seed(0)
    out = trainer.model.generate(
        **inputs, generation_config=trainer.generation_config, output_scores=True, return_dict_in_generate=True
    )
    completion_ids = out.sequences[:, 1:]
    sampled = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)
    mask = completion_mask(completion_ids, trainer.eos_token_id).bool()
    logps, _, _ = trainer._forward(trainer.model, inputs, completion_ids.masked_fill(~mask, trainer.pad_token_id))
    # KV-cached decoding vs one teacher-forced pass: float round-off only.
    torch.testing.assert_close(logps[mask], sampled[mask], atol=2e-3, rtol=0)
    if "top_k" in settings or "top_p" in settings:  # the truncation matters: ignoring it would be far off
        untruncated = (
            trainer._forward(trainer.model, inputs, completion_ids)[1] / trainer.args.temperature
        ).log_softmax(-1)
        untruncated = untruncated.gather(-1, completion_ids[..., None]).squeeze(-1)
        assert (untruncated[mask] - sampled[mask]).abs().max() > 2e-2


@pytest.mark.parametrize("use_peft", [False, True])
def test_first_minibatch_has_ratio_one_and_zero_kl(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, use_peft
):
    model = copy.deepcopy(tiny_model_varied_outputs)
    if use_peft:
        model = apply_lora(model, TIPPoModelConfig(use_peft=True, lora_r=4, lora_alpha=8))
    trainer = make_trainer(
        tmp_path, model, tiny_model_and_processor[1], demo_dataset_dir, kl_coef=0.1, use_value_head=False, max_steps=2
    )
    assert (trainer.ref_model is None) == use_peft  # PEFT: the reference is the model with its adapters disabled
    trainer.train()
    first, second = trainer.state.log_history[0], trainer.state.log_history[1]
    assert first["policy/ratio_mean"] == 1.0  # exactly: the old log-probs come from the same kernels and rows
    assert first["policy/clip_fraction"] == 0.0
    assert abs(first["kl"]) < 1e-7
    assert second["kl"] > 1e-6  # the second minibatch sees the updated policy


@pytest.mark.parametrize("accumulation", [1, 2])
def test_minibatches_before_the_first_step_take_their_old_log_probs_from_their_own_forward(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, accumulation
):
    """Without a value head, the minibatches an iteration sees before its first optimizer step are at the rollout
    policy: their loss forward gives their old log-probs (ratio exactly 1), one forward fewer each, and writes them
    into the rollout batch for the later passes; those equal a separate forward at the rollout policy."""
    trainer = make_trainer(
        tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir, use_value_head=False,
        kl_coef=0.0, num_ppo_epochs=2, gradient_accumulation_steps=accumulation, max_steps=4 // accumulation,
    )  # fmt: skip
    start = copy.deepcopy(trainer.model)
    forwards = []
    real_forward = trainer._forward
    trainer._forward = lambda *args, **kwargs: (
        forwards.append(torch.is_grad_enabled()) or real_forward(*args, **kwargs)
    )
    trainer.train()
    assert trainer.iteration == 1
    # 2 minibatches × 2 epochs: 4 loss forwards (with gradients), and a rollout forward (without) only for the
    # minibatch that comes after the first optimizer step: none with accumulation 2.
    assert forwards == [False] * (2 - accumulation) + [True] * 4
    first = trainer.state.log_history[0]
    assert first["policy/ratio_mean"] == 1.0 and first["policy/clip_fraction"] == 0.0
    old = trainer._rollout_batch["old_logps"]
    assert not old.isnan().any()  # every row's old log-probs, for the second pass
    rollout_inputs = {key: value for key, value in trainer._rollout_batch.items() if key in MODEL_INPUT_NAMES}
    expected, _, _ = real_forward(start, rollout_inputs, trainer._rollout_batch["completion_ids"])  # rollout policy
    mask = trainer._rollout_batch["completion_mask"].bool()
    torch.testing.assert_close(old[mask], expected[mask], atol=1e-4, rtol=0)


def test_standard_ppo_with_value_head_and_gae_runs_saves_and_resumes(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    processor = tiny_model_and_processor[1]
    settings = dict(use_value_head=True, max_steps=4, num_ppo_epochs=1, save_strategy="steps", save_steps=2)
    trainer = make_trainer(tmp_path, tiny_model_varied_outputs, processor, demo_dataset_dir, **settings)
    assert isinstance(trainer.model, PolicyAndValueModel)
    trainer.train()
    for key in (
        "loss/value",
        "loss/policy",
        "kl",
        "entropy",
        "policy/clip_fraction",
        "advantages/mean",
        "advantages/std",
        "returns/mean",
        "rewards/literal/mean",
        "completions/mean_length",
    ):
        values = logged(trainer, key)
        assert values and all(math.isfinite(v) for v in values), key
    assert trainer.model.value_head.weight.abs().sum() > 0  # the value head trained (it starts at 0)
    assert logged(trainer, "iteration") == [0.0, 1.0]

    checkpoint = tmp_path / "out/checkpoint-2"
    assert (checkpoint / "value_head.safetensors").is_file() and (checkpoint / "ppo_state.json").is_file()
    TIPPoModel.from_pretrained(checkpoint)  # a checkpoint is a loadable TIPPo model

    resumed = make_trainer(tmp_path, tiny_model_varied_outputs, processor, demo_dataset_dir, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.iteration == 2 and resumed._step == 4
    assert logged(resumed, "iteration") == [0.0, 1.0]  # the checkpoint's history, then iteration 1 sampled anew
    trainer.save_model()
    loaded = TIPPoModel.from_pretrained(tmp_path / "out")
    for name, tensor in trainer.model.policy.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


def test_a_ppo_checkpoint_or_final_save_that_fills_the_disk_is_one_line_and_leaves_the_saves_before(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, monkeypatch
):
    """The value head's own file (`safetensors.torch.save_file`) fails as a full disk does (ENOSPC)."""
    real_save_file = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if any(
            part.startswith("_incomplete-") and part != "_incomplete-checkpoint-2" for part in Path(filename).parts
        ):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    settings = dict(use_value_head=True, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = make_trainer(
        tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir, **settings
    )
    run = tmp_path / "out"
    with pytest.raises(DiskFullError, match=rf"^no space left on device writing '{run / 'checkpoint-4'}' \(it needs"):
        trainer.train()
    assert check_checkpoint(run / "checkpoint-2")["global_step"] == 2
    assert (run / "checkpoint-2/ppo_state.json").is_file()
    assert not (run / "checkpoint-4").exists() and not (run / "_incomplete-checkpoint-4").exists()
    with pytest.raises(DiskFullError, match=rf"^no space left on device writing '{run}' "):
        trainer.save_model()
    assert not (run / "model.safetensors").exists() and not (run / "_incomplete-save").exists()


def test_policy_and_value_model_saves_the_checkpoint_layout_and_loads_an_old_value_head(
    tmp_path, tiny_model_varied_outputs
):
    wrapper = PolicyAndValueModel(
        copy.deepcopy(tiny_model_varied_outputs), tiny_model_varied_outputs.config.hidden_size
    )
    with torch.no_grad():
        wrapper.value_head.weight.normal_()
        wrapper.value_head.offset.fill_(0.25)
    wrapper.save_pretrained(tmp_path / "own")
    wrapper.policy.save_pretrained(tmp_path / "policy")  # what a checkpoint holds beside the value head
    expected = {path.name for path in (tmp_path / "policy").iterdir()} | {"value_head.safetensors"}
    assert {path.name for path in (tmp_path / "own").iterdir()} == expected
    wrapper.save_pretrained(tmp_path / "consolidated", state_dict=wrapper.state_dict())  # as DeepSpeed hands it over
    for name in ("model.safetensors", "value_head.safetensors"):
        own, consolidated = (
            safetensors.torch.load_file(tmp_path / folder / name) for folder in ("own", "consolidated")
        )
        assert own.keys() == consolidated.keys() and all(torch.equal(own[k], consolidated[k]) for k in own), name
    TIPPoModel.from_pretrained(tmp_path / "own")

    # A value head saved before value_head_init existed has no offset: it loads with c = 0.
    old = {key: value for key, value in wrapper.value_head.state_dict().items() if key != "offset"}
    safetensors.torch.save_file(old, tmp_path / "own/value_head.safetensors")
    fresh = PolicyAndValueModel(copy.deepcopy(tiny_model_varied_outputs), tiny_model_varied_outputs.config.hidden_size)
    fresh.value_head.offset.fill_(1.0)
    fresh.load_value_head(tmp_path / "own")
    torch.testing.assert_close(fresh.value_head.weight, wrapper.value_head.weight)
    assert fresh.value_head.offset.item() == 0.0
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        fresh.load_value_head(tmp_path / "policy")


def test_reward_plugins_from_the_config_get_trl_arguments_and_columns(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    seen = {}

    def spy(prompts, completions, completion_ids, trainer_state, reference, title, images, **kwargs):
        seen.update(
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids,
            reference=reference,
            title=title,
            images=images,
            state=trainer_state,
            extra=set(kwargs),
        )
        return [0.0] * len(completions)

    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        trainer_rewards=["literal", str(REPO / "rewards/length_penalty.py:LengthPenalty"), spy],
        reward_funcs=None,
        reward_init_kwargs={str(REPO / "rewards/length_penalty.py:LengthPenalty"): {"target_length": 40}},
        reward_weights=[1.0, 0.5, 1.0],
        max_steps=1,
    )
    assert trainer.reward_names == ["literal", "LengthPenalty", "spy"]
    trainer.train()
    assert seen["prompts"] == seen["title"] and len(seen["completions"]) == 8
    assert all(isinstance(text, str) for text in seen["completions"] + seen["reference"])
    assert all(isinstance(path, str) and Path(path).is_file() for images in seen["images"] for path in images)
    assert all(1 not in ids[:-1] for ids in seen["completion_ids"])  # cut at the first EOS
    assert seen["state"] is trainer.state and {"id", "references"} <= seen["extra"]
    assert logged(trainer, "rewards/LengthPenalty/mean") and logged(trainer, "rewards/spy/mean") == [0.0]


def test_image_grounded_plugin_scores_completions_against_their_images(
    tmp_path, tiny_model_and_processor, demo_dataset_dir
):
    from tippo_rl.rewards import load_reward

    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "tippo")
    processor.save_pretrained(tmp_path / "tippo")
    reward = load_reward(
        str(REPO / "rewards/image_grounded.py:ImageGroundedReward"), model_name_or_path=str(tmp_path / "tippo")
    )
    rows = load_artmuse(demo_dataset_dir / "train.jsonl").select(range(3))
    paths = [[str(demo_dataset_dir / "images" / Path(image.filename).name) for image in row["images"]] for row in rows]
    scores = reward(prompts=rows["title"], completions=rows["reference"], images=paths)
    assert len(scores) == 3 and all(-1 <= s <= 1 for s in scores)
    # By hand for the first sample: cos(φ(y), mean_i φ(I_i)).
    tokens = processor.title_tokenizer([rows["reference"][0]], return_tensors="pt")
    pixels = processor.image_processor(images=rows["images"][0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = model.encoder.encode_text(tokens["input_ids"], tokens["attention_mask"])
        prototype = model.encoder.encode_images(pixels).mean(0, keepdim=True)
    assert scores[0] == pytest.approx(torch.cosine_similarity(text, prototype).item(), abs=1e-5)
    # PIL images and {path, bytes} dicts give the same scores as paths.
    assert reward(prompts=rows["title"], completions=rows["reference"], images=rows["images"]) == pytest.approx(
        scores, abs=1e-5
    )


def test_an_image_grounded_reward_without_a_model_says_how_to_give_it_one():
    from tippo_rl.demo.scene_verifier import SceneVerifier
    from tippo_rl.rewards.image_grounded import ImageGroundedReward

    for reward in (ImageGroundedReward(), SceneVerifier()):
        assert not reward.has_model
        with pytest.raises(ValueError, match="has no model: give it model_name_or_path"):
            reward(prompts=[""], completions=["a red circle"], images=[["a.png"]])
    with pytest.raises(ValueError, match="lang must be 'auto', 'en' or 'zh'"):
        SceneVerifier(lang="fr")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_scene_verifier_pays_for_the_objects_phi_sees_in_the_images_in_order(tmp_path, lang):
    """φ reads the objects of held-out scenes (all but a few shapes); a completion that names what it reads, in order,
    earns 1.5; a wrong colour, two objects swapped or one left out earns less; the language is read from the
    references."""
    from tippo_rl import build_tiny_tippo
    from tippo_rl.demo.scenes import describe
    from tippo_rl.rewards import load_reward

    model, processor = build_tiny_tippo(lang=lang, seed=0)
    model.save_pretrained(tmp_path / "tippo")
    processor.save_pretrained(tmp_path / "tippo")
    reward = load_reward("tippo_rl.demo.scene_verifier:SceneVerifier", model_name_or_path=str(tmp_path / "tippo"))
    assert reward.has_model
    data = make_demo_dataset(tmp_path / "demo", num_train=1, num_test=40, lang=lang)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    images = [[str(data / path) for path in row["images"]] for row in rows]
    truth = [[tuple(pair) for pair in row["objects"]] for row in rows]
    seen = [reward.read_images(paths, lang) for paths in images]
    assert sum(a == b for t, s in zip(truth, seen) for a, b in zip(t, s)) >= 0.95 * sum(map(len, truth))

    def score(objects_of):
        texts = [describe(row["place"], objects_of(objects), lang)[1] for row, objects in zip(rows, seen)]
        return reward(
            prompts=[""] * len(rows), completions=texts, images=images, reference=[r["reference"] for r in rows]
        )

    assert score(lambda objects: objects) == [1.5] * len(rows)
    assert reward.lang == lang
    recoloured = score(lambda objects: [("blue" if c == "purple" else "purple", s) for c, s in objects])
    assert recoloured == [0.5] * len(rows)  # every object wrong: only the count is right
    swapped = score(lambda objects: objects[::-1])
    assert all(value == 1.5 if objects == objects[::-1] else value < 1.5 for value, objects in zip(swapped, seen))
    dropped = score(lambda objects: objects[:-1] if len(objects) > 1 else objects)
    assert dropped == [(len(objects) - 1) / len(objects) if len(objects) > 1 else 1.5 for objects in seen]


# -- rewards that cannot teach, checkpoints that cannot be resumed (issue 12) --------------------------------------


def returns_none(prompts, completions, **kwargs):
    return [None] * len(completions)


def returns_half(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def test_a_reward_that_is_none_or_constant_for_a_whole_batch_is_said_once(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        trainer_rewards=["literal", returns_none, returns_half],
        max_steps=4,
    )
    with pytest.warns(UserWarning) as caught:
        trainer.train()  # 2 iterations
    messages = [str(warning.message) for warning in caught if "reward '" in str(warning.message)]
    assert len(messages) == 2
    assert "reward 'returns_none' returned None for all 8 samples of iteration 0: it has no effect" in messages[0]
    assert (
        "reward 'returns_half' gave all 8 samples of iteration 0 the same value (0.5): it adds nothing" in messages[1]
    )


def nan_from_step_2(prompts, completions, trainer_state, **kwargs):
    scores = [len(text) / 10 for text in completions]  # varied, so that each optimizer step moves the policy
    return [math.nan if trainer_state.global_step >= 2 and i == 3 else score for i, score in enumerate(scores)]


def test_a_reward_returning_nan_stops_its_iteration_before_the_optimizer_step(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    """Issue 24, item 2: a NaN reward in the second iteration's rollouts ends training before any optimizer step
    of that iteration: the policy still holds the weights of the checkpoint written after the first iteration."""
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        trainer_rewards=[nan_from_step_2],
        max_steps=4,  # 2 iterations of 2 optimizer steps
        save_strategy="steps",
        save_steps=2,
    )
    with pytest.raises(RewardError, match=r"^reward 'nan_from_step_2' \(.*\) returned nan for 1 of 8 samples \(3\); "):
        trainer.train()
    assert trainer.state.global_step == 2
    saved = TIPPoModel.from_pretrained(tmp_path / "out/checkpoint-2").state_dict()
    policy = unwrap_tippo(trainer.model)
    now = policy.state_dict()
    trained = [name for name, parameter in policy.named_parameters() if parameter.requires_grad]
    assert trained and set(trained) <= saved.keys()  # (the policy holds no frozen φ here: its features are cached)
    assert all(torch.equal(now[name], saved[name]) for name in trained)
    start = tiny_model_varied_outputs.state_dict()
    assert not all(torch.equal(start[name], saved[name]) for name in trained)  # the first iteration did train
    assert [path.name for path in (tmp_path / "out").glob("checkpoint-*")] == ["checkpoint-2"]


def test_ppo_checkpoints_name_a_missing_or_damaged_state_and_a_changed_iteration_layout(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_model_varied_outputs, tiny_model_and_processor[1]
    make_trainer(tmp_path, model, processor, demo_dataset_dir, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "out/checkpoint-2"
    assert json.loads((checkpoint / "ppo_state.json").read_text())["steps_per_generation"] == 2

    longer = make_trainer(tmp_path / "longer", model, processor, demo_dataset_dir, max_steps=-1, total_iterations=2)
    with pytest.warns(
        UserWarning, match=r"of a run of max_steps 2\) with max_steps 4 \(set directly or by total_iterations\)"
    ):
        longer.train(resume_from_checkpoint=str(checkpoint))
    assert longer.iteration == 2
    with pytest.raises(
        CheckpointError,
        match=r"was written with steps_per_generation 2, this run has 1: .*resume with --steps_per_generation 2",
    ):
        make_trainer(tmp_path, model, processor, demo_dataset_dir, steps_per_generation=1, max_steps=4).train(
            resume_from_checkpoint=str(checkpoint)
        )
    state = (checkpoint / "ppo_state.json").read_text()
    (checkpoint / "ppo_state.json").write_text(state[:10])
    with pytest.raises(CheckpointError, match=r"file ppo_state.json is damaged"):
        make_trainer(tmp_path, model, processor, demo_dataset_dir, max_steps=4).train(
            resume_from_checkpoint=str(checkpoint)
        )
    (checkpoint / "ppo_state.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"holds no ppo_state.json, .*not a PPO checkpoint .*or its save was interrupted"
    ):
        make_trainer(tmp_path, model, processor, demo_dataset_dir, max_steps=4).train(
            resume_from_checkpoint=str(checkpoint)
        )


# -- k completions per prompt -------------------------------------------------------------------------


class ColumnRecorder:
    """A reward plug-in that keeps every batch it scores (its columns and completions) and returns the literal reward."""

    __name__ = "recorded_literal"

    def __init__(self):
        self.batches = []

    def __call__(self, prompts, completions, reference, **columns):
        self.batches.append(
            {
                "prompts": list(prompts),
                "completions": list(completions),
                "reference": list(reference),
                "title": list(columns["title"]),
                "id": list(columns["id"]),
                "images": list(columns["images"]),
            }
        )
        from tippo_rl.rewards import literal_reward

        return literal_reward(completions, reference)


@pytest.mark.parametrize("baseline", ["leave_one_out", "greedy"])
def test_k_completions_per_prompt_stay_aligned_with_their_columns(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, baseline
):
    recorder = ColumnRecorder()
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        trainer_rewards=[recorder],
        use_value_head=False,
        advantage_baseline=baseline,
        num_generations=4,
        max_steps=4,
    )
    trainer.train()
    rollouts = [batch for batch in recorder.batches if len(batch["id"]) == 8]  # 8 rollouts = 2 prompts × 4
    assert len(rollouts) == 2  # one per iteration
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    by_id = {row["id"]: row for row in train}
    for batch in rollouts:
        assert len(set(batch["id"])) == 2
        for group in range(2):
            rows = slice(4 * group, 4 * group + 4)
            assert len(set(batch["id"][rows])) == 1  # a group is one prompt...
            row = by_id[batch["id"][4 * group]]
            assert batch["reference"][rows] == [row["reference"]] * 4  # ...with its reference, title and images
            assert batch["title"][rows] == batch["prompts"][rows] == [row["title"]] * 4
            assert all(len(images) == len(row["images"]) for images in batch["images"][rows])
        assert len(set(batch["completions"])) > 2  # sampled: a prompt's k completions differ
    if baseline == "greedy":  # the greedy decode of each prompt was scored too, with that prompt's columns
        greedy = [batch for batch in recorder.batches if len(batch["id"]) == 2]
        assert len(greedy) == 2 and [b["id"] for b in greedy] == [b["id"][::4] for b in rollouts]
        assert logged(trainer, "baseline/greedy_reward_mean")


def test_greedy_baseline_is_the_greedy_decodes_return(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    from tippo_rl.generation import generate_predictions
    from tippo_rl.rewards import literal_reward

    processor = tiny_model_and_processor[1]
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        processor,
        demo_dataset_dir,
        use_value_head=False,
        advantage_baseline="greedy",
        num_generations=2,
        whiten_advantages=False,
    )
    rows = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]
    rollouts = trainer.generate_rollouts(trainer.data_collator(rows))
    greedy_returns = trainer.greedy_baseline_returns(rollouts)
    raw = load_artmuse(demo_dataset_dir / "train.jsonl").select([0, 1])
    texts = generate_predictions(
        copy.deepcopy(tiny_model_varied_outputs), processor, raw, max_new_tokens=12, do_sample=False
    )
    expected = literal_reward([texts[i] for i in raw["id"]], raw["reference"])
    torch.testing.assert_close(greedy_returns, torch.tensor(expected))


# The built-in cider reward takes its idf from the whole training set up front: a resumed run scores alike.
@pytest.mark.parametrize("reward", ["literal", "cider"])
def test_resume_with_k_completions_per_prompt_is_exact(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, reward
):
    processor = tiny_model_and_processor[1]
    settings = dict(
        reward_funcs=[reward],
        use_value_head=False,
        advantage_baseline="leave_one_out",
        num_generations=2,
        max_steps=8,
        save_strategy="steps",
        save_steps=4,
    )  # 4 iterations of 2 steps; checkpoint after 2

    class Recording(PPOTrainer):
        def compute_advantages(self, returns, rollouts):
            advantages = super().compute_advantages(returns, rollouts)
            self.record.append(
                (self.iteration, list(rollouts["columns"]["id"]), returns.clone(), advantages[:, 0].clone())
            )
            return advantages

    def run(resume_from=None):
        trainer = Recording(
            copy.deepcopy(tiny_model_varied_outputs),
            ppo_config(tmp_path, **settings),
            processor,
            load_artmuse(demo_dataset_dir / "train.jsonl"),
        )
        trainer.record = []
        trainer.train(resume_from_checkpoint=resume_from)
        return trainer

    straight = run()
    resumed = run(resume_from=str(tmp_path / "out/checkpoint-4"))
    if reward == "cider":
        assert len(resumed.reward_funcs[0].seen) == len(set(resumed.train_dataset["reference"]))
    assert [m for m, *_ in resumed.record] == [2, 3]
    for (m_a, ids_a, G_a, A_a), (m_b, ids_b, G_b, A_b) in zip(straight.record[2:], resumed.record):
        assert (m_a, ids_a) == (m_b, ids_b)  # the same prompts, in the same groups
        torch.testing.assert_close(G_b, G_a)
        torch.testing.assert_close(A_b, A_a)
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, msg=name)


# -- λ1 during RL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "expected"), [("hold", [0.7, 0.7]), ("linear", [0.0, 0.5])])
def test_daa_lambda1_is_held_or_follows_m_over_M(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, schedule, expected
):
    model = copy.deepcopy(tiny_model_varied_outputs)
    model.set_daa_lambda1(0.7)  # where an SFT run might have left it
    trainer = make_trainer(
        tmp_path,
        model,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        daa_lambda_schedule=schedule,
        use_value_head=False,
        max_steps=4,
    )  # M = 2 iterations
    trainer.train()
    assert logged(trainer, "daa/lambda1") == pytest.approx(expected)
    assert trainer.model.daa_lambda1.item() == pytest.approx(expected[-1])


# -- critic warm-up ---------------------------------------------------------------------------------


def test_value_head_starts_at_the_first_batchs_mean_return_so_advantages_follow_R_minus_mean(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        whiten_advantages=False,
        max_steps=2,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    experience = trainer.make_rollout_batch(batch)
    offset = trainer.model.value_head.offset.item()
    torch.testing.assert_close(
        experience["old_values"], torch.full_like(experience["old_values"], offset) * experience["completion_mask"]
    )
    # V ≡ c: δ_t = 0 before the last token, δ_T = R − c, so Â_t = (γλ)^(T−1−t)·(R − c) has R − c's sign everywhere.
    last = experience["completion_mask"].sum(1) - 1
    R = experience["advantages"][torch.arange(8), last] + offset  # Â_T = δ_T = R − c
    assert offset == pytest.approx(R.mean().item(), abs=1e-6)  # c is the batch's mean return
    signs = torch.sign(experience["advantages"]) * experience["completion_mask"]
    torch.testing.assert_close(signs, torch.sign(R - offset)[:, None] * experience["completion_mask"].float())


class ZeroWhitenedTrainer(PPOTrainer):
    """Overrides one step: whitening returns Â = 0 (and keeps what it was given)."""

    def whiten_advantages(self, advantages, mask):
        self.unwhitened = advantages
        return torch.zeros_like(advantages)


class ShiftedTargetsTrainer(PPOTrainer):
    """Overrides one step: the loss batch holds Â = 0 and value targets one above the rollout's values."""

    def build_loss_batch(self, rollouts, advantages):
        loss_batch = super().build_loss_batch(rollouts, advantages)
        loss_batch["advantages"] = torch.zeros_like(advantages)
        loss_batch["value_targets"] = loss_batch["old_values"] + loss_batch["completion_mask"]
        return loss_batch


def first_loss_batch(trainer):
    return trainer.make_rollout_batch(trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))


def test_overriding_whiten_advantages_changes_what_the_loss_sees(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    config = ppo_config(tmp_path, use_value_head=False, kl_coef=0.0)
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    trainer = ZeroWhitenedTrainer(copy.deepcopy(tiny_model_varied_outputs), config, tiny_model_and_processor[1], train)
    loss_batch = first_loss_batch(trainer)
    mask = loss_batch["completion_mask"]
    assert torch.equal(loss_batch["advantages"], torch.zeros_like(mask, dtype=torch.float32))
    assert trainer.unwhitened.abs().sum() > 0  # the default step would have passed a signal on
    assert trainer.compute_loss(trainer.model, loss_batch).item() == 0.0  # −Â·r = 0 for every token
    whitened = PPOTrainer.whiten_advantages(trainer, trainer.unwhitened, mask)  # the default: mean 0, std 1
    assert masked_global_mean_std(whitened, mask, trainer.accelerator) == pytest.approx((0.0, 1.0), abs=1e-5)


def test_overriding_build_loss_batch_changes_what_the_loss_sees(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    config = ppo_config(tmp_path, kl_coef=0.0, vf_coef=1.0)
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    trainer = ShiftedTargetsTrainer(
        copy.deepcopy(tiny_model_varied_outputs), config, tiny_model_and_processor[1], train
    )
    loss_batch = first_loss_batch(trainer)
    # Â = 0: no policy loss; V = V_old = R − 1 on every completion token: ½·(V − R)² = ½.
    assert trainer.compute_loss(trainer.model, loss_batch).item() == pytest.approx(0.5, abs=1e-5)


def test_value_warmup_updates_only_the_value_head(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        value_warmup_iterations=1,
        max_steps=2,
    )  # one iteration, all warm-up
    trainer.train()
    for name, tensor in trainer.model.policy.state_dict().items():
        torch.testing.assert_close(tensor, tiny_model_varied_outputs.state_dict()[name], msg=name)
    assert trainer.model.value_head.weight.abs().sum() > 0
    assert logged(trainer, "value/warmup") == [1.0, 1.0]
    assert all(0 <= v <= 1 for v in logged(trainer, "advantages/first_token_negative"))


# -- evaluation by decoding ---------------------------------------------------------------------------


def eval_settings(**overrides):
    return dict(
        use_value_head=False,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=4,
        eval_max_samples=6,
        **overrides,
    )


def test_evaluation_during_ppo_logs_generation_metrics_and_samples(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, capsys
):
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    test = load_artmuse(demo_dataset_dir / "test.jsonl")
    trainer = PPOTrainer(
        copy.deepcopy(tiny_model_varied_outputs),
        ppo_config(tmp_path, max_steps=4, **eval_settings()),
        tiny_model_and_processor[1],
        train,
        eval_dataset=test,
    )
    trainer.train()
    for key in ("eval_rouge_l", "eval_cider", "eval_literal", "eval_rewards/literal"):
        values = logged(trainer, key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    assert logged(trainer, "eval_literal") == pytest.approx(
        logged(trainer, "eval_rewards/literal")
    )  # Eq. 7, the same texts
    samples = trainer.eval_completions
    assert len(samples["completion"]) == 6 and samples["reference"] == test["reference"][:6]
    assert "reference" in capsys.readouterr().out  # the sample table went to the console
    assert not any("eval_rouge_l" in entry and "loss/policy" in entry for entry in trainer.state.log_history)


def test_best_checkpoint_is_chosen_by_a_generation_metric(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    test = load_artmuse(demo_dataset_dir / "test.jsonl")
    settings = eval_settings(
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_literal",
        learning_rate=1e-2,
    )
    trainer = PPOTrainer(
        copy.deepcopy(tiny_model_varied_outputs),
        ppo_config(tmp_path, **settings),
        tiny_model_and_processor[1],
        train,
        eval_dataset=test,
    )
    trainer.train()
    scores = logged(trainer, "eval_literal")  # the tiny model's ROUGE-L is 0 throughout; Eq. 7 moves
    assert len(scores) == 3 and len(set(scores)) > 1
    steps = [entry["step"] for entry in trainer.state.log_history if "eval_literal" in entry]
    best = steps[max(range(len(scores)), key=lambda i: (scores[i], -i))]  # the first of equal scores is kept
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best}")
    assert trainer.state.best_metric == pytest.approx(max(scores))
    saved = TIPPoModel.from_pretrained(trainer.state.best_model_checkpoint)
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], tensor, msg=name)  # the best weights were loaded


def test_the_best_checkpoint_of_a_run_with_a_value_head_loads_into_policy_and_value_head(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir)
    best = PolicyAndValueModel(copy.deepcopy(tiny_model_varied_outputs), trainer.model.config.hidden_size)
    with torch.no_grad():
        for parameter in [*best.policy.language_model.parameters(), best.value_head.weight]:
            parameter.add_(1.0)
    best.save_pretrained(tmp_path / "checkpoint-2")
    trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-2")
    trainer._load_best_model()  # what load_best_model_at_end calls at the end of training
    for name, tensor in best.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], tensor, msg=name)


def test_a_lora_policy_with_a_value_head_resumes_exactly_and_its_best_checkpoint_loads_adapter_and_value_head(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    """A checkpoint of a PEFT policy with a value head holds the adapter and `value_head.safetensors`, no full weights:
    resuming it and loading it as the best checkpoint load both parts."""
    model = apply_lora(
        copy.deepcopy(tiny_model_varied_outputs), TIPPoModelConfig(use_peft=True, lora_r=4, lora_alpha=8)
    )
    settings = dict(use_value_head=True, max_steps=4, save_strategy="steps", save_steps=2)
    processor = tiny_model_and_processor[1]
    straight = make_trainer(tmp_path, model, processor, demo_dataset_dir, **settings)
    straight.train()
    checkpoint = tmp_path / "out/checkpoint-2"
    names = {path.name for path in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "value_head.safetensors"} <= names and "model.safetensors" not in names

    resumed = make_trainer(tmp_path, model, processor, demo_dataset_dir, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.iteration == 2 and resumed._step == 4
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, msg=name)

    fresh = make_trainer(tmp_path, model, processor, demo_dataset_dir, **settings)  # value head 0, LoRA's B 0
    fresh.state.best_model_checkpoint = str(checkpoint)
    fresh._load_best_model()  # what load_best_model_at_end calls at the end of training
    for part, loaded in (
        ("adapter_model.safetensors", get_peft_model_state_dict(fresh.model.policy)),
        ("value_head.safetensors", fresh.model.value_head.state_dict()),
    ):
        saved = safetensors.torch.load_file(checkpoint / part)
        assert saved.keys() == loaded.keys() and any(tensor.abs().sum() > 0 for tensor in saved.values()), part
        for name, tensor in saved.items():
            torch.testing.assert_close(loaded[name], tensor, msg=name)


def test_the_progress_bar_counts_iterations(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    from transformers.trainer_callback import ProgressCallback

    from tippo_rl.trainer.tippo_trainer import IterationProgressCallback

    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        disable_tqdm=False,
        max_steps=-1,
        total_iterations=2,
        num_ppo_epochs=2,  # an iteration: 2 minibatches × 2 epochs = 4 steps
    )
    (bar,) = [callback for callback in trainer.callback_handler.callbacks if isinstance(callback, ProgressCallback)]
    assert isinstance(bar, IterationProgressCallback)
    seen = {}
    close = bar.on_train_end
    bar.on_train_end = lambda *a, **k: (
        seen.update(total=bar.training_bar.total, n=bar.training_bar.n, unit=bar.training_bar.unit),
        close(*a, **k),
    )
    trainer.train()
    assert trainer.state.global_step == 8 and seen == {"total": 2, "n": 2, "unit": "iteration"}
