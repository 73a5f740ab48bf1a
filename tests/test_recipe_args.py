"""tippo_rl.recipe_args: the recipes' parser ends a broken config, a bad option or a bad input with one line."""

from __future__ import annotations

import re

import pytest
import torch

from tippo_rl.data import DataValidationError
from tippo_rl.recipe_args import TIPPoModelConfig, TIPPoParser, TIPPoScriptArguments, load_model_and_processor
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


def test_model_folders_that_do_not_exist_or_hold_only_a_pickle_are_refused(tmp_path, tiny_model_and_processor):
    with pytest.raises(ValueError, match=rf"--model_name_or_path '{tmp_path / 'nothing'}': no such folder"):
        load_model_and_processor(TIPPoModelConfig(model_name_or_path=str(tmp_path / "nothing")))
    model, _ = tiny_model_and_processor
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):  # safetensors only, as the README says
        load_model_and_processor(TIPPoModelConfig(model_name_or_path=str(tmp_path)))


def test_dataset_name_with_column_options_loads_train_and_test_splits(tmp_path, demo_dataset_dir):
    from datasets import DatasetDict

    from tippo_rl import load_artmuse
    from tippo_rl.recipe_args import load_datasets

    splits = DatasetDict(
        {
            "train": load_artmuse(demo_dataset_dir / "train.jsonl"),
            "test": load_artmuse(demo_dataset_dir / "test.jsonl"),
        }
    )
    splits = splits.rename_columns({"reference": "text", "title": "name"}).remove_columns("references")
    splits.save_to_disk(tmp_path / "saved")
    config = tmp_path / "config.yaml"
    config.write_text("dataset: demo\nmax_steps: 3\n")  # the YAML's dataset gives way to --dataset_name
    script_args, _, _ = parser().parse_args_and_config(
        args=[
            "--config",
            str(config),
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--dataset_name",
            str(tmp_path / "saved"),
            "--reference_column",
            "text",
            "--title_column",
            "name",
            "--dataset_test_split",
            "test",
        ]
    )
    assert script_args.dataset == "hf" and script_args.dataset_id == str(tmp_path / "saved")
    train, evaluation = load_datasets(script_args)
    assert len(train) == 24 and len(evaluation) == 8
    assert train[0]["reference"] == splits["train"][0]["text"] and train[0]["place"] == splits["train"][0]["place"]
    script_args.dataset_test_split = "validation"  # a dataset without that split: no evaluation data
    assert load_datasets(script_args)[1] is None
    script_args.reference_column = "caption"
    with pytest.raises(
        DataValidationError, match="no column 'caption' for the reference .*; its columns: id, name, images, text"
    ):
        load_datasets(script_args)


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


def test_max_target_length_sets_the_processors(tmp_path):
    _, _, model_args = parser().parse_args_and_config(
        args=[
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--max_target_length",
            "16",
            "--tiny_pretrained_encoder",
            "false",
        ]
    )
    _, processor = load_model_and_processor(model_args)
    assert processor.max_target_length == 16
    assert processor.tokenize_references(["word " * 40]).shape[1] == 16
