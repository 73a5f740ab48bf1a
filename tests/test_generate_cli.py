"""`tippo-generate` (tippo_rl.generation:main): a saved model + a title + images → the model's text on stdout; a
missing image → exit status 2 and a message naming the file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from tippo_rl.generation import main


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_images(demo_dataset_dir):
    """The images of a demo sample with two of them, and its title."""
    for line in (demo_dataset_dir / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        if len(row["images"]) == 2:
            return row["title"], [str(demo_dataset_dir / path) for path in row["images"]]
    raise AssertionError("no demo sample with two images")


def test_prints_the_models_greedy_generation(
    saved_model, two_images, tiny_model_varied_outputs, tiny_model_and_processor, capsys
):
    title, images = two_images
    assert (
        main(
            [
                "--model",
                str(saved_model),
                "--title",
                title,
                "--images",
                *images,
                "--max_new_tokens",
                "12",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip()

    processor = tiny_model_and_processor[1]
    batch = processor(titles=[title], images=[[Image.open(path) for path in images]])
    with torch.no_grad():
        expected = processor.batch_decode(
            tiny_model_varied_outputs.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=12)
        )[0]
    assert printed == expected.strip() and printed  # the varied model says something, and exactly what it generates


def test_beam_search_and_sampling_options_run(saved_model, two_images, capsys):
    title, images = two_images
    common = [
        "--model",
        str(saved_model),
        "--title",
        title,
        "--images",
        *images,
        "--max_new_tokens",
        "6",
        "--device",
        "cpu",
    ]
    assert main([*common, "--num_beams", "3"]) == 0
    assert main([*common, "--do_sample", "--temperature", "0.7"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_do_sample_takes_true_or_false_as_trl_does_and_a_bare_flag_is_true(saved_model, two_images, capsys):
    from tippo_rl.generation import build_parser

    parse = lambda *options: build_parser().parse_args(["--model", "m", "--images", "a.png", *options])  # noqa: E731
    assert parse("--do_sample", "true").do_sample is True
    assert parse("--do_sample", "false").do_sample is False
    assert parse("--do_sample", "--top_k", "5").do_sample is True and parse().do_sample is None
    with pytest.raises(SystemExit):
        parse("--do_sample", "maybe")
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err
    title, images = two_images
    common = ["--model", str(saved_model), "--title", title, "--images", *images, "--max_new_tokens", "6"]
    assert main([*common, "--device", "cpu", "--do_sample", "false"]) == 0
    assert main([*common, "--device", "cpu"]) == 0
    greedy_false, greedy = capsys.readouterr().out.strip().splitlines()
    assert greedy_false == greedy


def test_missing_image_exits_2_naming_the_file(saved_model, two_images, tmp_path, capsys):
    missing = tmp_path / "no_such_image.png"
    assert main(["--model", str(saved_model), "--images", two_images[1][0], str(missing)]) == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.err and "does not exist" in captured.err and captured.out == ""


def test_installed_command_reports_a_missing_image(saved_model, tmp_path):
    """The console script from setup.cfg, as a user runs it."""
    command = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "tippo-generate"
    if not command.exists():
        pytest.skip(f"{command} is not installed (pip install -e .)")
    missing = tmp_path / "gone.jpg"
    result = subprocess.run(
        [str(command), "--model", str(saved_model), "--images", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"tippo-generate: image '{missing}' does not exist" in result.stderr


def test_impossible_options_and_missing_model_folders_are_one_line(saved_model, two_images, tmp_path, capsys):
    images = two_images[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(saved_model), "--images", *images, "--num_beams", "0"])
    assert exit_info.value.code == 2 and "--num_beams must be ≥ 1" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "no_model"), "--images", *images]) == 2
    assert f"tippo-generate: --model '{tmp_path / 'no_model'}': no such folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--images", *images]) == 2
    assert "holds no saved model (no config.json)" in capsys.readouterr().err


def test_batch_mode_jsonl_in_jsonl_out_with_several_texts_per_sample(saved_model, demo_dataset_dir, tmp_path, capsys):
    rows = [json.loads(line) for line in (demo_dataset_dir / "test.jsonl").read_text().splitlines()][:3]
    inputs = tmp_path / "inputs.jsonl"
    # No references needed; relative image paths start from the input file's folder, so write absolute ones here.
    inputs.write_text(
        "".join(
            json.dumps(
                {"id": r["id"], "title": r["title"], "images": [str(demo_dataset_dir / p) for p in r["images"]]}
            )
            + "\n"
            for r in rows
        )
    )
    common = [
        "--model",
        str(saved_model),
        "--input_file",
        str(inputs),
        "--max_new_tokens",
        "6",
        "--device",
        "cpu",
        "--batch_size",
        "2",
    ]
    assert main([*common, "--output_file", str(tmp_path / "out.jsonl")]) == 0
    greedy = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in greedy] == [r["id"] for r in rows] and all(
        isinstance(row["generation"], str) for row in greedy
    )
    # the inputs beside the output: title and image paths; no reference in these rows, so none in the output
    assert [(row["title"], row["images"]) for row in greedy] == [
        (r["title"], [str(demo_dataset_dir / p) for p in r["images"]]) for r in rows
    ]
    assert not any("reference" in row for row in greedy)
    assert main([*common, "--num_beams", "3", "--num_return_sequences", "2"]) == 0
    beams = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(row["generations"]) for row in beams] == [2, 2, 2]
    assert main([*common, "--generation_config", '{"num_beams": 3, "num_return_sequences": 3}']) == 0
    assert [len(json.loads(line)["generations"]) for line in capsys.readouterr().out.splitlines()] == [3, 3, 3]


def test_batch_mode_errors_and_every_option_has_help(saved_model, tmp_path, capsys):
    from tippo_rl.generation import build_parser

    assert all(action.help for action in build_parser()._actions)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"title": "t", "images": ["nope.png"]}) + "\n")
    assert main(["--model", str(saved_model), "--input_file", str(bad)]) == 2
    assert "line 1: field 'images'" in capsys.readouterr().err
    assert main(["--model", str(saved_model), "--input_file", str(bad), "--num_return_sequences", "2"]) == 2
    assert "needs --do_sample or at least as many --num_beams" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(saved_model)])
    assert "give one sample (--images, with --title) or a batch (--input_file or --dataset_name)" in (
        capsys.readouterr().err
    )


def test_a_hugging_face_dataset_with_its_own_column_names(saved_model, demo_dataset_dir, tmp_path, capsys):
    """--dataset_name and friends read a dataset as the recipes do; each output row holds its inputs and reference."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in (demo_dataset_dir / "test.jsonl").read_text().splitlines()][:3]
    folder = tmp_path / "scenes"
    DatasetDict(
        {
            "validation": Dataset.from_list(
                [
                    {
                        "caption": r["reference"],
                        "name": r["title"],
                        "photos": [str(demo_dataset_dir / p) for p in r["images"]],
                    }
                    for r in rows
                ]
            )
        }
    ).save_to_disk(folder)
    common = ["--model", str(saved_model), "--dataset_name", str(folder), "--max_new_tokens", "6", "--device", "cpu"]
    columns = ["--title_column", "name", "--images_column", "photos", "--reference_column", "caption"]
    assert main([*common, *columns, "--dataset_split", "validation"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["title"], row["images"], row["reference"]) for row in out] == [
        (r["title"], [str(demo_dataset_dir / p) for p in r["images"]], r["reference"]) for r in rows
    ]
    assert len({row["id"] for row in out}) == 3 and all(isinstance(row["generation"], str) for row in out)

    # The same rows as a JSONL file give the same generations.
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"title": row["title"], "images": row["images"]}) + "\n" for row in out))
    assert main([*common[:2], "--input_file", str(inputs), *common[4:]]) == 0
    assert [json.loads(line)["generation"] for line in capsys.readouterr().out.splitlines()] == [
        row["generation"] for row in out
    ]

    assert main([*common, *columns]) == 2  # no 'test' split
    assert "has no split 'test'; its splits: validation" in capsys.readouterr().err
    assert main([*common, "--dataset_split", "validation"]) == 2  # no 'images' column
    assert "no column 'images' for the images (--images_column)" in capsys.readouterr().err


def test_generation_and_scoring_show_progress_bars(
    tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, capsys
):
    from tippo_rl import compute_metrics, load_artmuse
    from tippo_rl.generation import generate_predictions

    dataset = load_artmuse(demo_dataset_dir / "test.jsonl").select(range(3))
    predictions = generate_predictions(
        tiny_model_varied_outputs, tiny_model_and_processor[1], dataset, batch_size=2, progress=True, max_new_tokens=4
    )
    compute_metrics(predictions, dict(zip(dataset["id"], dataset["references"])), metrics=["rouge_l"], progress=True)
    err = capsys.readouterr().err
    assert "Generating" in err and "/3 " in err and "Scoring" in err


def test_decoding_settings_become_generate_options_with_the_users_on_top():
    from tippo_rl.generation import generate_kwargs, generation_config

    options = generate_kwargs(
        {"num_beams": 4, "no_repeat_ngram_size": 3}, num_beams=1, temperature=None, do_sample=False
    )
    assert options == {"num_beams": 4, "do_sample": False, "no_repeat_ngram_size": 3}  # unset settings are left out
    assert list(options) == ["num_beams", "do_sample", "no_repeat_ngram_size"]  # the order evaluate.py's report prints
    config = generation_config(do_sample=True, top_k=None, max_new_tokens=8)
    assert (config.do_sample, config.top_k, config.max_new_tokens) == (True, None, 8)
