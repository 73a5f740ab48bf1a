"""PPOTrainer: the PPO math on hand-computed cases, the first minibatch (ratio 1, KL 0), standard PPO with a value
head and GAE, PEFT's reference policy, reward plug-ins from the config, checkpoints."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from trl import TrlParser

from tippo_rl import TIPPoModel, load_artmuse
from tippo_rl.checkpoints import CheckpointError
from tippo_rl.data import model_inputs
from tippo_rl.recipe_args import TIPPoModelConfig, TIPPoScriptArguments, apply_lora
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_trainer import (
    PolicyAndValueModel,
    PPOTrainer,
    clipped_surrogate_loss,
    clipped_value_loss,
    completion_mask,
    generalized_advantage_estimation,
    kl_penalty,
)

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
    return PPOTrainer(copy.deepcopy(model), ppo_config(tmp_path, **overrides), processor, train, reward_funcs=trainer_rewards)


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# -- the math, by hand --------------------------------------------------------------------------------


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
        (["--eval_strategy", "steps"], "eval_strategy"),
    ],
)
def test_bad_config_values_fail_at_parse_time_naming_the_field(tmp_path, arguments, field):
    parser = TrlParser((TIPPoScriptArguments, PPOConfig, TIPPoModelConfig))
    with pytest.raises(ValueError, match=field):
        parser.parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", *arguments])


def test_rollout_batch_and_iteration_sizes(tmp_path):
    args = ppo_config(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=None,
                      num_ppo_epochs=3, max_steps=-1, total_iterations=5)
    assert args.steps_per_generation == 2 and args.generation_batch_size == 8
    assert args.minibatches_per_iteration == 6
    assert args.max_steps == 15  # 5 iterations × 6 minibatches / 2 accumulation steps
    assert args.bf16 is False  # no GPU here


# -- training -----------------------------------------------------------------------------------------


def test_log_probs_are_the_sampling_distributions_at_the_temperature(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    trainer = make_trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir, temperature=0.7)
    rows = [trainer.train_dataset[i] for i in range(3)]
    forward_inputs = model_inputs(trainer.data_collator(rows))
    completion_ids = torch.randint(0, trainer.model.config.vocab_size, (3, 5))
    logps, logits, _ = trainer._forward(trainer.model, forward_inputs, completion_ids)
    naive = (logits / 0.7).log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(logps, naive)
    assert logps.dtype == torch.float32 and logps.shape == (3, 5)


@pytest.mark.parametrize("use_peft", [False, True])
def test_first_minibatch_has_ratio_one_and_zero_kl(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, use_peft):
    model = copy.deepcopy(tiny_model_varied_outputs)
    if use_peft:
        model = apply_lora(model, TIPPoModelConfig(use_peft=True, lora_r=4, lora_alpha=8))
    trainer = make_trainer(tmp_path, model, tiny_model_and_processor[1], demo_dataset_dir, kl_coef=0.1, use_value_head=False, max_steps=2)
    assert (trainer.ref_model is None) == use_peft  # PEFT: the reference is the model with its adapters disabled
    trainer.train()
    first, second = trainer.state.log_history[0], trainer.state.log_history[1]
    assert first["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["policy/clip_fraction"] == 0.0
    assert abs(first["kl"]) < 1e-7
    assert second["kl"] > 1e-6  # the second minibatch sees the updated policy


def test_standard_ppo_with_value_head_and_gae_runs_saves_and_resumes(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    processor = tiny_model_and_processor[1]
    settings = dict(use_value_head=True, max_steps=4, num_ppo_epochs=1, save_strategy="steps", save_steps=2)
    trainer = make_trainer(tmp_path, tiny_model_varied_outputs, processor, demo_dataset_dir, **settings)
    assert isinstance(trainer.model, PolicyAndValueModel)
    trainer.train()
    for key in ("loss/value", "loss/policy", "kl", "entropy", "policy/clip_fraction", "advantages/mean",
                "advantages/std", "returns/mean", "rewards/literal/mean", "completions/mean_length"):
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


def test_reward_plugins_from_the_config_get_trl_arguments_and_columns(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    seen = {}

    def spy(prompts, completions, completion_ids, trainer_state, reference, title, images, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, reference=reference,
                    title=title, images=images, state=trainer_state, extra=set(kwargs))
        return [0.0] * len(completions)

    trainer = make_trainer(
        tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir,
        trainer_rewards=["literal", str(REPO / "rewards/length_penalty.py:LengthPenalty"), spy], reward_funcs=None,
        reward_init_kwargs={str(REPO / "rewards/length_penalty.py:LengthPenalty"): {"target_length": 40}},
        reward_weights=[1.0, 0.5, 1.0], max_steps=1,
    )
    assert trainer.reward_names == ["literal", "LengthPenalty", "spy"]
    trainer.train()
    assert seen["prompts"] == seen["title"] and len(seen["completions"]) == 8
    assert all(isinstance(text, str) for text in seen["completions"] + seen["reference"])
    assert all(isinstance(path, str) and Path(path).is_file() for images in seen["images"] for path in images)
    assert all(1 not in ids[:-1] for ids in seen["completion_ids"])  # cut at the first EOS
    assert seen["state"] is trainer.state and {"id", "references"} <= seen["extra"]
    assert logged(trainer, "rewards/LengthPenalty/mean") and logged(trainer, "rewards/spy/mean") == [0.0]


def test_image_grounded_plugin_scores_completions_against_their_images(tmp_path, tiny_model_and_processor, demo_dataset_dir):
    from tippo_rl.rewards import load_reward

    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "tippo")
    processor.save_pretrained(tmp_path / "tippo")
    reward = load_reward(str(REPO / "rewards/image_grounded.py:ImageGroundedReward"), model_name_or_path=str(tmp_path / "tippo"))
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
    assert reward(prompts=rows["title"], completions=rows["reference"], images=rows["images"]) == pytest.approx(scores, abs=1e-5)


# -- rewards that cannot teach, checkpoints that cannot be resumed (issue 12) --------------------------------------


def returns_none(prompts, completions, **kwargs):
    return [None] * len(completions)


def returns_half(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def test_a_reward_that_is_none_or_constant_for_a_whole_batch_is_said_once(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    trainer = make_trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir,
                           trainer_rewards=["literal", returns_none, returns_half], max_steps=4)
    with pytest.warns(UserWarning) as caught:
        trainer.train()  # 2 iterations
    messages = [str(warning.message) for warning in caught if "reward '" in str(warning.message)]
    assert len(messages) == 2
    assert "reward 'returns_none' returned None for all 8 samples of iteration 0: it has no effect" in messages[0]
    assert "reward 'returns_half' gave all 8 samples of iteration 0 the same value (0.5): it adds nothing" in messages[1]


def test_ppo_checkpoints_name_a_missing_or_damaged_state_and_a_changed_iteration_layout(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    model, processor = tiny_model_varied_outputs, tiny_model_and_processor[1]
    make_trainer(tmp_path, model, processor, demo_dataset_dir, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "out/checkpoint-2"
    assert json.loads((checkpoint / "ppo_state.json").read_text())["steps_per_generation"] == 2

    longer = make_trainer(tmp_path / "longer", model, processor, demo_dataset_dir, max_steps=-1, total_iterations=2)
    with pytest.warns(UserWarning, match=r"of a run of max_steps 2\) with max_steps 4 \(set directly or by total_iterations\)"):
        longer.train(resume_from_checkpoint=str(checkpoint))
    assert longer.iteration == 2
    with pytest.raises(CheckpointError, match=r"was written with steps_per_generation 2, this run has 1: .*resume with --steps_per_generation 2"):
        make_trainer(tmp_path, model, processor, demo_dataset_dir, steps_per_generation=1, max_steps=4).train(resume_from_checkpoint=str(checkpoint))
    state = (checkpoint / "ppo_state.json").read_text()
    (checkpoint / "ppo_state.json").write_text(state[:10])
    with pytest.raises(CheckpointError, match=r"file ppo_state.json is damaged"):
        make_trainer(tmp_path, model, processor, demo_dataset_dir, max_steps=4).train(resume_from_checkpoint=str(checkpoint))
    (checkpoint / "ppo_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"holds no ppo_state.json, .*not a PPO checkpoint .*or its save was interrupted"):
        make_trainer(tmp_path, model, processor, demo_dataset_dir, max_steps=4).train(resume_from_checkpoint=str(checkpoint))
