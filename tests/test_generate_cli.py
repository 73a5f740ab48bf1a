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


def test_prints_the_models_greedy_generation(saved_model, two_images, tiny_model_varied_outputs, tiny_model_and_processor, capsys):
    title, images = two_images
    assert main(["--model", str(saved_model), "--title", title, "--images", *images, "--max_new_tokens", "12", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()

    processor = tiny_model_and_processor[1]
    batch = processor(titles=[title], images=[[Image.open(path) for path in images]])
    with torch.no_grad():
        expected = processor.batch_decode(tiny_model_varied_outputs.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=12))[0]
    assert printed == expected.strip() and printed  # the varied model says something, and exactly what it generates


def test_beam_search_and_sampling_options_run(saved_model, two_images, capsys):
    title, images = two_images
    common = ["--model", str(saved_model), "--title", title, "--images", *images, "--max_new_tokens", "6", "--device", "cpu"]
    assert main([*common, "--num_beams", "3"]) == 0
    assert main([*common, "--do_sample", "--temperature", "0.7"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


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
        [str(command), "--model", str(saved_model), "--images", str(missing)], capture_output=True, text=True, timeout=120
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
