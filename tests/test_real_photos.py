"""Real photos as a smoke set: scikit-image's bundled photos (colour, greyscale and RGBA, up to 512×512 and larger
than the demo's 64×64 by far) go through the processor and `tippo-generate` at their real sizes and modes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image


data = pytest.importorskip("skimage.data", reason="scikit-image bundles the photos (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[1]
# name → the PIL mode its file opens in
PHOTOS = {"astronaut": "RGB", "coffee": "RGB", "chelsea": "RGB", "rocket": "RGB", "camera": "L", "logo": "RGBA"}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """Each photo saved as its own file (JPEG for the RGB photos, PNG otherwise), as a user would have them."""
    folder = tmp_path_factory.mktemp("photos")
    files = {}
    for name, mode in PHOTOS.items():
        image = Image.fromarray(getattr(data, name)())
        assert image.mode == mode, f"skimage.data.{name}: {image.mode}"
        path = folder / f"{name}.{'jpg' if mode == 'RGB' else 'png'}"
        image.save(path)
        files[name] = path
    return files


def test_the_processor_takes_real_photos_of_any_size_and_mode(photo_files, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    images = [Image.open(path) for path in photo_files.values()]
    assert {image.mode for image in images} == {"RGB", "L", "RGBA"} and max(image.width for image in images) >= 512
    batch = processor(titles=["a photo", "照片"], images=[images[:5], images[5:]])
    assert batch["pixel_values"].shape == (2, 5, 3, 32, 32) and batch["image_mask"].tolist() == [
        [True] * 5,
        [True] + [False] * 4,
    ]
    assert torch.isfinite(batch["pixel_values"]).all()
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=4)
    assert output.shape[0] == 2


def test_tippo_generate_runs_on_real_photos(photo_files, saved_model):
    """The console script, as a user runs it, on a colour JPEG, a greyscale PNG and an RGBA PNG."""
    command = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "tippo-generate"
    if not command.exists():
        pytest.skip(f"{command} is not installed (pip install -e .)")
    images = [str(photo_files[name]) for name in ("astronaut", "camera", "logo")]
    result = subprocess.run(
        [str(command), "--model", str(saved_model), "--title", "a photo", "--images", *images, "--max_new_tokens", "8", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
