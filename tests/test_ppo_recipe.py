"""recipes/ppo.py: PPO with a user's own reward alone, on the embedded default at a tiny size; its demo config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from recipe_loading import load_recipe

from tippo_rl import TIPPoModel
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer.ppo_config import PPOConfig


REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes/configs/demo_ppo.yaml"
RECIPE = REPO / "recipes/ppo.py"

USER_REWARD = '''
def mentions_place(prompts, completions, place, log_metric, **kwargs):
    """1 when the completion names the scene's place (the demo rows' own `place` field), plus a little for length."""
    scores = [float(where in text) + len(text.split()) / 100 for text, where in zip(completions, place)]
    log_metric("mentions_place/hits", sum(score >= 1 for score in scores) / len(scores))
    return scores
'''


def parse(*arguments):
    return TIPPoParser((TIPPoScriptArguments, PPOConfig, TIPPoModelConfig)).parse_args_and_config(args=list(arguments))


def test_demo_config_parses_as_scst_with_cider_and_the_scene_verifier():
    script_args, args, model_args = parse("--config", str(DEMO))
    assert script_args.dataset == "demo" and model_args.model_name_or_path == "outputs/demo_sft"
    assert args.reward_funcs == ["cider", "tippo_rl.demo.scene_verifier:SceneVerifier"] and not args.use_value_head
    assert args.reward_weights == [1.0, 10.0] and not args.reward_init_kwargs  # the verifier reads the policy's φ
    assert args.advantage_baseline == "greedy" and args.num_generations == 4 and args.whiten_advantages is False
    assert args.max_steps == args.total_iterations * args.minibatches_per_iteration


def test_recipe_trains_with_a_user_reward_alone_which_reads_an_extra_column(tmp_path, saved_model):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(textwrap.dedent(USER_REWARD))
    load_recipe("ppo").main(
        *parse(
            "--config",
            str(DEMO),
            "--model_name_or_path",
            str(saved_model),
            "--output_dir",
            str(tmp_path / "out"),
            "--demo_dir",
            str(tmp_path / "demo"),
            "--demo_num_train",
            "16",
            "--demo_num_test",
            "4",
            "--feature_cache_dir",
            str(tmp_path / "cache"),
            "--total_iterations",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--max_new_tokens",
            "8",
            "--logging_steps",
            "1",
            "--save_steps",
            "8",
            "--disable_tqdm",
            "true",
            "--reward_funcs",
            f"{plugin}:mentions_place",
            "--reward_weights",
            "1",
        )
    )
    history = json.loads((tmp_path / "out/checkpoint-8/trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "rewards/mentions_place/mean" in entry]
    assert [entry["iteration"] for entry in logged] == [0.0, 1.0]
    assert all("mentions_place/hits" in entry for entry in logged)  # the reward's log_metric
    assert not any("rewards/literal/mean" in entry for entry in history)  # no built-in reward was needed
    assert not (tmp_path / "out/value_head.safetensors").exists()  # SCST: no critic
    TIPPoModel.from_pretrained(tmp_path / "out")


def test_recipe_on_a_hub_style_dataset_passes_its_other_columns_to_the_reward(tmp_path, saved_model, demo_dataset_dir):
    from tippo_rl import load_artmuse

    load_artmuse(demo_dataset_dir / "train.jsonl").rename_column("reference", "text").remove_columns(
        "references"
    ).save_to_disk(tmp_path / "saved")
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(textwrap.dedent(USER_REWARD))
    load_recipe("ppo").main(
        *parse(
            "--config",
            str(DEMO),
            "--model_name_or_path",
            str(saved_model),
            "--output_dir",
            str(tmp_path / "out"),
            "--dataset_name",
            str(tmp_path / "saved"),
            "--reference_column",
            "text",
            "--feature_cache_dir",
            str(tmp_path / "cache"),
            "--total_iterations",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--max_new_tokens",
            "8",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
            "--reward_funcs",
            f"{plugin}:mentions_place",
            "literal",
            "--reward_weights",
            "1",
            "1",
        )
    )
    assert (tmp_path / "out/model.safetensors").is_file()


# -- a reward plug-in that cannot be used, or misbehaves: one line, exit status 2 (issue 24, item 2) ----------------

PLUGINS = """
import math

def no_kwargs(prompts, completions):
    return [1.0] * len(completions)

def nan_from_the_second_iteration(prompts, completions, trainer_state, **kwargs):
    # 4 optimizer steps per iteration below: the second iteration's rollouts are scored at step 4
    return [math.nan if trainer_state.global_step >= 4 and i in (1, 2) else 1.0 for i in range(len(completions))]
"""


def run_recipe(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`python recipes/ppo.py` on the demo config at a tiny size (2 iterations of 4 optimizer steps)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(RECIPE), "--config", str(DEMO), "--output_dir", str(tmp_path / "out")]
    command += ["--demo_dir", str(tmp_path / "demo"), "--demo_num_train", "16", "--demo_num_test", "4"]
    command += ["--feature_cache_dir", str(tmp_path / "cache"), "--total_iterations", "2"]
    command += ["--per_device_train_batch_size", "4", "--max_new_tokens", "8", "--save_steps", "4"]
    command += ["--disable_tqdm", "true", "--reward_weights", "1", *arguments]
    return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("{dir}/no_such_rewards.py:length", "file '{dir}/no_such_rewards.py' does not exist"),
        (
            "{dir}/plugins.py:length",
            "'{dir}/plugins.py' defines no 'length'; it defines: nan_from_the_second_iteration, no_kwargs",
        ),
        (
            "{dir}/plugins.py:no_kwargs",
            "no_kwargs(prompts, completions) takes no **kwargs; the trainer passes prompts, completions, completion_ids, "
            "trainer_state, log_metric, log_extra and every dataset column by keyword (a reward function is "
            "f(prompts, completions, **kwargs), as in TRL)",
        ),
    ],
)
def test_a_reward_plugin_that_cannot_be_used_is_one_line_before_the_model_loads(tmp_path, spec, problem):
    (tmp_path / "plugins.py").write_text(PLUGINS)
    spec, problem = spec.format(dir=tmp_path), problem.format(dir=tmp_path)
    # A model folder that does not exist: loading it first would end the run with another message.
    result = run_recipe(tmp_path, "--model_name_or_path", str(tmp_path / "no_model_yet"), "--reward_funcs", spec)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ppo.py: error: reward '{spec}': {problem}"), last
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_reward_returning_nan_ends_the_run_with_one_line_and_the_last_checkpoint_intact(tmp_path, saved_model):
    (tmp_path / "plugins.py").write_text(PLUGINS)
    spec = f"{tmp_path}/plugins.py:nan_from_the_second_iteration"
    result = run_recipe(tmp_path, "--model_name_or_path", str(saved_model), "--reward_funcs", spec)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"ppo.py: error: reward 'nan_from_the_second_iteration' ({spec}) returned nan for 2 of 8 samples (1, 2); "
        "sample 1: prompt '"
    ), last
    assert "Traceback" not in result.stderr
    # The first iteration's checkpoint is there and whole; nothing after it was saved.
    out = tmp_path / "out"
    assert json.loads((out / "checkpoint-4/trainer_state.json").read_text())["global_step"] == 4
    TIPPoModel.from_pretrained(out / "checkpoint-4")
    assert [path.name for path in out.glob("checkpoint-*")] == ["checkpoint-4"]
    assert not (out / "model.safetensors").exists()
