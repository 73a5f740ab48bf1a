"""Nothing lost, nothing silent: a run SIGKILLed at any moment resumes (`--resume_from_checkpoint last`) to the weights
of an uninterrupted run, bit for bit; a killed save is never taken for a checkpoint or a model; a damaged checkpoint
file is named before training starts; no saved file holds the Hub token."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from killing import max_abs_difference, run_recipe, weights

REPO = Path(__file__).resolve().parents[1]
SFT = ("TIPPoScriptArguments", "TIPPoSFTConfig", "TIPPoModelConfig")
POLISH = ("TIPPoScriptArguments", "PolishPPOConfig", "TIPPoModelConfig")
KILLED = -signal.SIGKILL


def sft_arguments(tmp_path, name, *extra):
    return [
        "--config", str(REPO / "recipes/configs/demo_sft.yaml"), "--output_dir", str(tmp_path / name),
        "--demo_dir", str(tmp_path / "demo"), "--demo_num_train", "24", "--demo_num_test", "4",
        "--feature_cache_dir", str(tmp_path / "cache"), "--max_steps", "6", "--save_steps", "2",
        "--per_device_train_batch_size", "8", "--logging_steps", "1", "--disable_tqdm", "true", *extra,
    ]  # 3 steps per pass over the data: checkpoints 2 (first pass), 4 (second), 6 (the end)


def polish_arguments(tmp_path, model, name, *extra):
    return [
        "--config", str(REPO / "recipes/configs/demo_polishppo.yaml"), "--model_name_or_path", str(model),
        "--output_dir", str(tmp_path / name), "--demo_dir", str(tmp_path / "demo"), "--demo_num_train", "16",
        "--demo_num_test", "4", "--feature_cache_dir", str(tmp_path / "cache"), "--total_iterations", "4",
        "--per_device_train_batch_size", "4", "--steps_per_generation", "2", "--num_ppo_epochs", "1",
        "--max_new_tokens", "8", "--logging_steps", "1", "--save_steps", "2", "--save_total_limit", "0",
        "--disable_tqdm", "true", *extra,
    ]  # an iteration is 8 rollouts in 2 steps, a pass over the data 2 iterations: checkpoints 2, 4 (end of the first
    # pass), 6 (second pass), 8 (the end)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "step", "resumes_from"),
    [
        ("mid_step", 4, 4),  # the second pass over the data
        ("checkpoint_write", 4, 2),  # checkpoint-4 half written: resumes from checkpoint-2, crosses the pass boundary
        ("final_save", None, 6),  # the weights written, not the processor
    ],
)
def test_sft_killed_then_resumed_ends_bit_identical(tmp_path, moment, step, resumes_from):
    assert run_recipe("sft", SFT, sft_arguments(tmp_path, "straight")) == 0
    assert run_recipe("sft", SFT, sft_arguments(tmp_path, "killed"), moment, step) == KILLED
    killed = tmp_path / "killed"
    if moment == "final_save":
        assert not (killed / "model.safetensors").exists()  # a killed final save never looks like a model
    complete = sorted(path.name for path in killed.glob("checkpoint-*"))
    assert f"checkpoint-{resumes_from}" in complete and all((killed / name / "trainer_state.json").is_file() for name in complete)
    assert run_recipe("sft", SFT, sft_arguments(tmp_path, "killed", "--resume_from_checkpoint", "last")) == 0
    assert max_abs_difference(weights(killed), weights(tmp_path / "straight")) == 0.0
    assert json.loads((killed / "checkpoint-6/trainer_state.json").read_text())["global_step"] == 6
    assert not list(killed.glob("checkpoint-7")) and not list(killed.glob("_incomplete-*"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "step"),
    [
        ("mid_step", 6),  # iteration 3, the second pass over the data: resumes from checkpoint-6
        ("checkpoint_write", 6),  # resumes from checkpoint-4, at the pass boundary
        ("final_save", None),  # resumes from checkpoint-8, the end: trains nothing
    ],
)
def test_polishppo_killed_then_resumed_ends_bit_identical(tmp_path, saved_model, moment, step):
    assert run_recipe("polishppo", POLISH, polish_arguments(tmp_path, saved_model, "straight")) == 0
    assert run_recipe("polishppo", POLISH, polish_arguments(tmp_path, saved_model, "killed"), moment, step) == KILLED
    assert run_recipe("polishppo", POLISH, polish_arguments(tmp_path, saved_model, "killed", "--resume_from_checkpoint", "last")) == 0
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    assert max_abs_difference(weights(killed), weights(straight)) == 0.0
    for name in ("checkpoint-6", "checkpoint-8"):
        assert json.loads((killed / name / "ppo_state.json").read_text()) == json.loads((straight / name / "ppo_state.json").read_text())
    assert json.loads((killed / "checkpoint-8/ppo_state.json").read_text())["iteration"] == 4
    assert not list(killed.glob("checkpoint-9"))
