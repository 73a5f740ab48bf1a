"""TRL's GRPO vocabulary in recipes/ppo.py: a GRPO YAML written as TRL documents it runs (with each loss_type), the
loss types against a hand computation, clip-higher, truncated completions, `algorithm`, aliases, refusals, completion
logging and the dataset's own column names in the rewards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from recipe_loading import load_recipe

from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_math import aggregate_token_losses, clipped_surrogate_loss


REPO = Path(__file__).resolve().parents[1]

# TRL's GRPOConfig options as its documentation spells them; the model and dataset lines are ours.
GRPO_YAML = """
model_name_or_path: {model}
dataset: demo
demo_dir: {demo}
demo_num_train: 16
demo_num_test: 4
output_dir: {output}
reward_funcs: [cider, literal]
reward_weights: [1.0, 0.5]
learning_rate: 1.0e-4
per_device_train_batch_size: 8
gradient_accumulation_steps: 1
num_generations: 4
max_completion_length: 12
temperature: 1.0
beta: 0.04
epsilon: 0.2
epsilon_high: 0.28
num_iterations: 1
scale_rewards: group
loss_type: {loss_type}
mask_truncated_completions: true
max_steps: 2
logging_steps: 1
log_completions: true
num_completions_to_print: 2
save_strategy: "no"
report_to: none
use_cpu: true
use_value_head: false
advantage_baseline: group
"""


def parse(*arguments):
    return TIPPoParser((TIPPoScriptArguments, PPOConfig, TIPPoModelConfig)).parse_args_and_config(args=list(arguments))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_a_trl_grpo_yaml_runs_through_the_ppo_recipe(tmp_path, saved_model, loss_type, capsys):
    config = tmp_path / "grpo.yaml"
    config.write_text(
        GRPO_YAML.format(model=saved_model, demo=tmp_path / "demo", output=tmp_path / "out", loss_type=loss_type)
    )
    script_args, args, model_args = parse("--config", str(config), "--feature_cache_dir", str(tmp_path / "cache"))
    assert (args.kl_coef, args.cliprange, args.cliprange_high) == (0.04, 0.2, 0.28)
    assert (args.max_new_tokens, args.num_ppo_epochs, args.loss_type) == (12, 1, loss_type)
    trainer = load_recipe("ppo").main(script_args, args, model_args)
    history = [entry for entry in trainer.state.log_history if "loss/policy" in entry]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(entry["loss/policy"])) for entry in history)
    rows = [json.loads(line) for line in (tmp_path / "out/completions.jsonl").open()]
    assert len(rows) == 2 * 8 and {row["step"] for row in rows} == {1, 2}  # every row of each rollout batch, once
    assert {"prompt", "completion", "reference", "cider", "literal", "advantage"} <= set(rows[0])
    assert "cider" in capsys.readouterr().out  # TRL's console table


def test_loss_types_match_a_hand_computation():
    losses = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    hand = {
        "bnpo": (1 + 2 + 3 + 4) / 4,
        "grpo": ((1 + 2 + 3) / 3 + 4 / 1) / 2,
        "dr_grpo": (1 + 2 + 3 + 4) / (2 * 6),
        "dapo": (1 + 2 + 3 + 4) / 5.0,
    }
    for loss_type, expected in hand.items():
        got = aggregate_token_losses(losses, mask, loss_type, max_completion_length=6, tokens_per_minibatch=5.0)
        assert got.item() == pytest.approx(expected), loss_type


def test_clip_higher_clips_the_ratio_to_one_minus_epsilon_and_one_plus_epsilon_high():
    logps = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, fraction, _ = clipped_surrogate_loss(logps, old, advantages, mask, cliprange=0.2, cliprange_high=0.28)
    # token 1: A > 0, ratio 1.5 clipped to 1.28; token 2: A < 0, ratio 0.5 clipped to 0.8.
    assert loss.item() == pytest.approx((-1.28 + 0.8) / 2) and fraction.item() == 1.0


def test_algorithm_sets_each_published_algorithm_unless_told_otherwise():
    _, grpo, _ = parse("--algorithm", "grpo", "--output_dir", "x", "--per_device_train_batch_size", "8")
    assert (grpo.use_value_head, grpo.advantage_baseline, grpo.scale_rewards, grpo.num_generations) == (
        False, "group", "group", 8,
    )  # fmt: skip
    assert grpo.whiten_advantages is False
    _, rloo, _ = parse("--algorithm", "rloo", "--num_generations", "2", "--output_dir", "x")
    assert (rloo.advantage_baseline, rloo.num_generations) == ("leave_one_out", 2)
    _, dr, _ = parse("--algorithm", "dr_grpo", "--output_dir", "x", "--per_device_train_batch_size", "8")
    assert (dr.scale_rewards, dr.loss_type) == ("none", "dr_grpo")
    _, scst, _ = parse("--algorithm", "scst", "--output_dir", "x")
    assert scst.advantage_baseline == "greedy" and not scst.use_value_head
    _, ppo, _ = parse("--algorithm", "ppo", "--output_dir", "x")
    assert ppo.use_value_head and ppo.whiten_advantages
    _, old_bool, _ = parse("--algorithm", "grpo", "--scale_rewards", "false", "--output_dir", "x",
                           "--per_device_train_batch_size", "8")  # fmt: skip
    assert old_bool.scale_rewards == "none"  # TRL's former boolean


def run_ppo(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "recipes/ppo.py"), *arguments], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--use_vllm", "true"], "use_vllm: vLLM cannot generate with TIPPo"),
        (["--loss_type", "cispo"], "loss_type must be one of bnpo, grpo, dr_grpo, dapo"),
        (["--algorithm", "ppo2"], "algorithm must be one of ppo, grpo, dr_grpo, rloo, scst"),
        (
            ["--lerning_rate", "1"],
            "unknown option on the command line: --lerning_rate (did you mean --learning_rate?)",
        ),
        (["--vllm_mode", "colocate"], "--vllm_mode (TRL GRPOConfig's; it has no counterpart here)"),
    ],
)
def test_what_has_no_meaning_here_is_refused_in_one_line(arguments, message):
    result = run_ppo("--output_dir", "/tmp/unused", *arguments)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("ppo.py: error: ") and message in result.stderr


REWARD_READING_TEXT = '''
def names_the_caption(prompts, completions, text, reference, **kwargs):
    """The dataset's target column, under its own name (`text`) and as `reference`."""
    assert text == reference
    return [float(c == t) for c, t in zip(completions, text)]
'''


def test_rewards_receive_the_dataset_s_column_under_its_own_name(tmp_path, saved_model, demo_dataset_dir):
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in (demo_dataset_dir / "train.jsonl").open()]
    images = [[str(demo_dataset_dir / path) for path in row["images"]] for row in rows]
    split = Dataset.from_dict(
        {"name": [r["title"] for r in rows], "images": images, "text": [r["reference"] for r in rows]}
    )
    DatasetDict(train=split).save_to_disk(tmp_path / "saved")
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(REWARD_READING_TEXT))
    load_recipe("ppo").main(
        *parse("--config", str(REPO / "recipes/configs/demo_ppo.yaml"), "--model_name_or_path", str(saved_model),
               "--dataset_name", str(tmp_path / "saved"), "--title_column", "name", "--reference_column", "text",
               "--reward_funcs", f"{tmp_path / 'my_rewards.py'}:names_the_caption", "--reward_weights", "1",
               "--output_dir", str(tmp_path / "out"),
               "--total_iterations", "1", "--per_device_train_batch_size", "4", "--num_generations", "2",
               "--advantage_baseline", "group", "--max_new_tokens", "8", "--eval_strategy", "no", "--save_strategy", "no",
               "--feature_cache_dir", str(tmp_path / "cache"))
    )  # fmt: skip


def test_truncated_completions_are_scored_but_left_out_of_the_loss(tmp_path, saved_model, demo_dataset_dir):
    from tippo_rl import TIPPoModel, TIPPoProcessor, load_artmuse
    from tippo_rl.trainer.ppo_trainer import PPOTrainer

    args = PPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, use_value_head=False,
        advantage_baseline="group", max_new_tokens=6, total_iterations=1, mask_truncated_completions=True,
        report_to="none", use_cpu=True, save_strategy="no", feature_cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    rewards = []
    trainer = PPOTrainer(
        TIPPoModel.from_pretrained(saved_model), args, TIPPoProcessor.from_pretrained(saved_model),
        load_artmuse(demo_dataset_dir / "train.jsonl"),
        reward_funcs=[lambda completions, **kwargs: rewards.extend(completions) or [1.0] * len(completions)],
    )  # fmt: skip
    loss_batch = trainer.make_rollout_batch(trainer.data_collator(next(iter(trainer.get_train_dataloader())).rows))
    ended = (loss_batch["completion_ids"] == trainer.eos_token_id).any(1)
    assert len(rewards) == 8  # every completion is scored, truncated or not
    assert (~ended).any(), "no truncated completion at max_new_tokens 6: the test sees nothing"
    assert (loss_batch["completion_mask"].sum(1)[~ended] == 0).all() and (
        loss_batch["completion_mask"].sum(1)[ended] > 0
    ).all()
