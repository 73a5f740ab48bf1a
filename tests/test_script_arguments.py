"""tippo_rl.script_arguments: the recipes' parser ends a broken config, a bad option or a bad input with one line."""

from __future__ import annotations

import re

import pytest

from tippo_rl.data import DataValidationError
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig


def parser():
    return TIPPoParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps: 3\nlearning_rate: [1e-3\n", r"not valid YAML: line 3, column 1: "),
        ("max_steps: 3\n  bad: indent\n", r"not valid YAML: line 2, column 6: mapping values are not allowed here"),
        ("- just\n- a list\n", r"expected a YAML mapping of option: value, got list"),
    ],
)
def test_a_broken_yaml_config_is_one_line_naming_its_line(tmp_path, capsys, text, message):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args_and_config(args=["--config", str(config)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: --config '{config}': " in error
    assert re.search(message, error), error


def test_a_missing_config_and_a_bad_value_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args_and_config(args=["--config", str(tmp_path / "none.yaml")])
    assert "--config '" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--max_steps", "0"])
    assert "error: max_steps 0 trains nothing" in capsys.readouterr().err


def test_bad_inputs_inside_a_recipe_end_with_their_message_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info, parser().reporting_input_errors():
        raise DataValidationError("train.jsonl, line 3: field 'images': image 'a.jpg' does not exist")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: train.jsonl, line 3: field 'images': image 'a.jpg' does not exist\n"
    )


def test_the_run_length_on_the_command_line_wins_over_the_yamls_other_one(tmp_path):
    from pathlib import Path

    from tippo_rl.trainer.polishppo_config import PolishPPOConfig

    demo = str(Path(__file__).resolve().parents[1] / "recipes/configs/demo_polishppo.yaml")  # total_iterations: 80
    ppo_parser = TIPPoParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig))
    _, args, _ = ppo_parser.parse_args_and_config(args=["--config", demo, "--max_steps", "2"])
    assert args.max_steps == 2 and args.total_iterations is None
    config = tmp_path / "steps.yaml"
    config.write_text("max_steps: 300\nuse_cpu: true\n")
    _, args, _ = ppo_parser.parse_args_and_config(args=["--config", str(config), "--total_iterations", "3"])
    assert args.total_iterations == 3 and args.max_steps == 3 * args.minibatches_per_iteration
    _, args, _ = ppo_parser.parse_args_and_config(args=["--config", demo])  # the YAML alone: unchanged
    assert args.total_iterations == 80


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max_length", "128"], "--max_length is an option of TRL's text SFT .*--max_target_length"),
        (["--completion_only_loss", "true"], "--completion_only_loss .*reference tokens only"),
        (["--dataset_text_field", "caption"], "--dataset_text_field .*--reference_column"),
        (["--packing", "true"], "--packing"),
    ],
)
def test_sft_text_options_that_tippo_ignores_are_refused(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit):
        parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", *option])
    assert re.search(message, capsys.readouterr().err)


def test_a_cpu_run_takes_one_torch_thread_unless_told_otherwise(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true"])
        assert torch.get_num_threads() == 1
        parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--cpu_threads", "2"])
        assert torch.get_num_threads() == 2
        with pytest.raises(SystemExit):
            parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--cpu_threads", "-1"])
        assert "cpu_threads must be ≥ 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_report_to_tensorboard_without_tensorboard_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    with pytest.raises(SystemExit):
        parser().parse_args_and_config(
            args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "tensorboard"]
        )
    assert "report_to tensorboard: the tensorboard package is not installed; pip install -e '.[tensorboard]'" in (
        capsys.readouterr().err
    )


def test_every_report_to_backend_the_configs_name_has_an_extra():
    """A shipped config's `report_to` is installed by `.[dev]` and by an extra of its own."""
    import configparser
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    extras = configparser.ConfigParser()
    extras.read(repo / "setup.cfg")
    extras = {name: value.split() for name, value in extras["options.extras_require"].items()}
    named = set()
    for config in (repo / "recipes/configs").glob("*.yaml"):
        report_to = yaml.safe_load(config.read_text()).get("report_to") or []
        named.update([report_to] if isinstance(report_to, str) else report_to)
    for backend in named - {"none"}:
        assert any(requirement.startswith(backend) for requirement in extras[backend]), backend
        assert any(requirement.startswith(backend) for requirement in extras["dev"]), backend


def test_eval_max_samples_is_max_eval_samples_where_a_recipe_has_only_that(tmp_path, caplog):
    """evaluate/ablate have max_eval_samples only: --eval_max_samples (and the YAML key) set it, with a note; the
    training recipes keep both (rows kept for the run vs rows decoded at each evaluation)."""
    from tippo_rl.evaluation import EvaluateArguments, EvaluationArguments

    evaluate = TIPPoParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    script_args, *_ = evaluate.parse_args_and_config(args=["--models", "m", "--eval_max_samples", "7"])
    assert script_args.max_eval_samples == 7
    assert "eval_max_samples is read as max_eval_samples" in caplog.text
    config = tmp_path / "evaluate.yaml"
    config.write_text("models: [m]\neval_max_samples: 5\n")
    script_args, *_ = evaluate.parse_args_and_config(args=["--config", str(config)])
    assert script_args.max_eval_samples == 5

    script_args, training_args, _ = parser().parse_args_and_config(
        args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--eval_max_samples", "3", "--max_eval_samples", "9"]
    )
    assert (training_args.eval_max_samples, script_args.max_eval_samples) == (3, 9)


def test_no_shipped_config_uses_gradient_checkpointing_and_the_old_name_still_takes_effect(tmp_path):
    """transformers 5 renamed it activation_checkpointing; the old name warns, and TIPPo's SFT config once dropped it."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "recipes/configs"
    assert not [config.name for config in configs.glob("*.yaml") if "gradient_checkpointing" in config.read_text()]
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        old = TIPPoSFTConfig(output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing=True)
    assert old.activation_checkpointing is True
    assert TIPPoSFTConfig(output_dir=str(tmp_path), use_cpu=True).activation_checkpointing is False


def test_deepspeed_is_told_it_runs_on_the_cpu_where_there_is_no_accelerator(tmp_path, monkeypatch):
    """Its "[WARNING] Setting accelerator to CPU ..." is noise on a CPU machine; a DS_ACCELERATOR set by hand stays."""
    import os

    import torch

    monkeypatch.setenv("DS_ACCELERATOR", "")  # so that monkeypatch restores the variable as it was after the test
    monkeypatch.delenv("DS_ACCELERATOR")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert os.environ["DS_ACCELERATOR"] == "xpu"
    monkeypatch.delenv("DS_ACCELERATOR")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    parser().parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert "DS_ACCELERATOR" not in os.environ  # a GPU machine: DeepSpeed detects it itself


def test_bf16_is_resolved_after_the_report_to_check(tmp_path):
    """bf16's None default becomes a boolean (off on a CPU); 9fc310c had put its resolution inside check_tensorboard."""
    from tippo_rl.trainer.ppo_config import PPOConfig

    assert TIPPoSFTConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False
    assert PPOConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False
