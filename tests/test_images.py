"""Tests for `tippo_rl.processing_tippo.open_image`, the one place images are opened (issue 24): each
test makes a real file of a kind that used to be read wrong, and checks what TIPPo sees."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tippo_rl import processing_tippo
from tippo_rl.data import DataValidationError, load_artmuse
from tippo_rl.data_collator import TIPPoDataCollator
from tippo_rl.processing_tippo import BACKGROUND, open_image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def picture(height: int = 24, width: int = 40) -> np.ndarray:
    """An 8-bit greyscale picture `(height, width)`: a gradient with a dark square, every level from 0 to 255."""
    values = np.linspace(0, 255, height * width).reshape(height, width)
    values[4:12, 4:12] = 10
    return values.round().astype(np.uint8)


# -- item 8: pixel formats PIL would clip or drop ------------------------------------------------------------------


def test_a_16_bit_png_gives_the_processor_the_pixels_of_its_8_bit_version(tmp_path, tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    eight = picture()
    Image.fromarray(eight).save(tmp_path / "8bit.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # 8 → 16 bits as an editor does
    with Image.open(tmp_path / "16bit.png") as scan:
        assert scan.mode == "I;16"
        assert np.asarray(scan.convert("RGB")).mean() > 250  # what PIL alone gives: nearly all white
    expected = processor("t", tmp_path / "8bit.png")["pixel_values"]
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    for source in (tmp_path / "16bit.png", Image.open(tmp_path / "16bit.png")):  # a path, or a PIL image given as is
        got = processor("t", source)["pixel_values"]
        assert ((got - expected).abs() * std).max() <= 1 / 255 + 1e-6  # within one 8-bit level before normalising


def test_16_bit_values_are_divided_by_257(tmp_path):
    values = np.arange(0, 65536, 7, dtype=np.uint16)[: 96 * 96].reshape(96, 96)
    Image.fromarray(values).save(tmp_path / "ramp.png")
    got = pixels(open_image(tmp_path / "ramp.png"))
    assert got.shape == (96, 96, 3) and (got == got[..., :1]).all()
    assert np.abs(got[..., 0] - values / 257).max() <= 0.5
    assert np.abs(got[..., 0] - (values >> 8)).max() <= 1  # the top byte, as most tools keep it, within one level


def test_32_bit_integer_tiffs_use_their_16_bit_range_or_else_their_maximum(tmp_path):
    sixteen = np.array([[0, 257, 65535, -5]], dtype=np.int32)
    Image.fromarray(sixteen).save(tmp_path / "i16.tif")
    wide = np.array([[0, 600_000, 1_000_000, 200_000]], dtype=np.int32)
    Image.fromarray(wide).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert pixels(open_image(tmp_path / "i16.tif"))[0, :, 0].tolist() == [0, 1, 255, 0]  # negative values are 0
    assert pixels(open_image(tmp_path / "i32.tif"))[0, :, 0].tolist() == [0, 153, 255, 51]  # was all 255


def test_float_tiffs_are_read_as_0_to_1_and_clipped(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 1.7, -0.2, np.nan]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert pixels(open_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255, 255, 0, 0]


def test_a_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:] = (30, 30, 200)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    for max_pixels in (processing_tippo.MAX_DECODED_PIXELS, 8 * 8):  # full size, and decoded at 1/4 scale
        image = open_image(tmp_path / "print.jpg", max_pixels=max_pixels)
        assert image.mode == "RGB"
        small = np.asarray(image.resize((2, 1), Image.Resampling.BOX), dtype=np.int16)
        assert np.abs(small[0] - [(200, 30, 30), (30, 30, 200)]).max() <= 12


def test_transparent_pixels_show_the_background_not_the_hidden_colour(tmp_path, tiny_model_and_processor):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])  # index 0 is black, and transparent
    palette.paste(1, (0, 0, 4, 8))
    palette.save(tmp_path / "logo.png", transparency=0)
    image = open_image(tmp_path / "logo.png")
    assert image.getpixel((1, 1)) == (255, 0, 0) and image.getpixel((6, 1)) == BACKGROUND  # was (0, 0, 0)

    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 128), (0, 0, 4, 8))
    rgba.save(tmp_path / "rgba.png")
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").getpixel((0, 0)) == BACKGROUND
    assert open_image(tmp_path / "rgba.png").getpixel((6, 1)) == BACKGROUND
    assert open_image(tmp_path / "rgba.png").getpixel((1, 1)) == (127, 127, 255)  # half blue, half white
    processor = tiny_model_and_processor[1]
    white = processor("t", Image.new("RGB", (8, 8), BACKGROUND))["pixel_values"]
    assert torch.equal(processor("t", Image.new("RGBA", (8, 8), (0, 0, 0, 0)))["pixel_values"], white)


def test_an_exif_rotated_photo_is_seen_upright(tmp_path):
    stored = Image.new("RGB", (40, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show the stored pixels rotated 90° clockwise
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    for max_pixels in (processing_tippo.MAX_DECODED_PIXELS, 10 * 5):  # full size, and decoded at a reduced size
        image = open_image(tmp_path / "phone.jpg", max_pixels=max_pixels)
        assert image.width < image.height  # upright: portrait
        top, bottom = image.getpixel((image.width // 2, 1)), image.getpixel((image.width // 2, image.height - 2))
        assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below


# -- item 9: animated images ---------------------------------------------------------------------------------------


def animated_gif(path, colours=("red", "lime", "blue")):
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def open_files() -> set[str]:
    """The files this process holds open (Linux)."""
    folder = "/proc/self/fd"
    return {
        os.path.realpath(os.path.join(folder, fd))
        for fd in os.listdir(folder)
        if os.path.exists(os.path.join(folder, fd))
    }


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_an_animated_gif_gives_its_first_frame_reported_once_and_its_file_is_closed(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(processing_tippo, "_reported_animation", False)
    first, second = animated_gif(tmp_path / "first.gif"), animated_gif(tmp_path / "second.gif", ("blue", "red"))
    with Image.open(first) as gif:
        assert gif.is_animated
    with caplog.at_level(logging.WARNING, logger="tippo_rl.processing_tippo"):
        image = open_image(first)
        assert str(first.resolve()) not in open_files()  # PIL keeps an animated file open after load(); not here
        assert image.getpixel((8, 8)) == (255, 0, 0)
        assert open_image(second).getpixel((8, 8)) == (0, 0, 255)
        assert open_image({"bytes": first.read_bytes(), "path": None}).getpixel((8, 8)) == (255, 0, 0)
    reports = [record.getMessage() for record in caplog.records]
    assert reports == [
        f"image '{first}' has several frames; TIPPo uses the first (other such images are not reported)"
    ]


def test_an_animated_gif_leaves_no_unclosed_file_warning(tmp_path):
    import gc
    import warnings

    path = animated_gif(tmp_path / "a.gif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        open_image(path)
        gc.collect()
    assert not [warning for warning in caught if issubclass(warning.category, ResourceWarning)]


# -- item 13: huge images ------------------------------------------------------------------------------------------


def write_jsonl(folder, images) -> str:
    path = folder / "data.jsonl"
    path.write_text(json.dumps({"title": "t", "images": images, "reference": "r"}) + "\n")
    return path


def test_an_image_over_the_pixel_limit_is_a_bad_row_naming_file_size_limit_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(processing_tippo, "MAX_IMAGE_PIXELS", 100 * 100)
    Image.new("RGB", (200, 100), "red").save(tmp_path / "scan.png")
    Image.new("RGB", (100, 100), "red").save(tmp_path / "fits.png")
    with pytest.raises(
        DataValidationError,
        match=r"data\.jsonl, line 1: field 'images': image '.*scan\.png' is 200×100 = 20,000 pixels, more than "
        r"MAX_IMAGE_PIXELS = 10,000 \(tippo_rl/processing_tippo\.py\); resize it, e\.g\. to 4096 px on its long side",
    ):
        load_artmuse(write_jsonl(tmp_path, ["fits.png", "scan.png"]))
    assert len(load_artmuse(write_jsonl(tmp_path, ["fits.png"]))) == 1


def test_a_jpeg_is_refused_only_when_its_eighth_scale_is_over_the_limit(tmp_path):
    Image.new("RGB", (160, 80), "red").save(tmp_path / "wide.jpg")
    Image.new("RGB", (80, 80), "red").save(tmp_path / "square.jpg")
    assert open_image(tmp_path / "square.jpg", max_pixels=100, max_image_pixels=100).size == (10, 10)  # at 1/8
    with pytest.raises(ValueError, match=r"wide\.jpg' is 160×80 = 12,800 pixels, more than MAX_IMAGE_PIXELS = 100"):
        open_image(tmp_path / "wide.jpg", max_image_pixels=100)


def test_the_limit_holds_for_the_processor_and_the_collator_and_pil_s_own_limit_reads_the_same(
    tmp_path, monkeypatch, tiny_model_and_processor
):
    processor = tiny_model_and_processor[1]
    Image.new("RGB", (200, 100), "red").save(tmp_path / "scan.png")
    monkeypatch.setattr(processing_tippo, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ValueError, match=r"sample 0, image 0: image '.*scan\.png' is 200×100 = 20,000 pixels"):
        processor("t", tmp_path / "scan.png")
    row = {"id": "r1", "title": "t", "images": [{"path": str(tmp_path / "scan.png"), "bytes": None}], "reference": "r"}
    with pytest.raises(DataValidationError, match=r"sample 'r1': image '.*scan\.png' is 200×100 = 20,000 pixels"):
        TIPPoDataCollator(processor)([row])
    monkeypatch.setattr(processing_tippo, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)  # PIL's decompression-bomb error: beyond twice this
    with pytest.raises(
        ValueError, match=r"^image '.*scan\.png' is 20,000 pixels, more than PIL's limit of 8,000 .*; resize"
    ):
        open_image(tmp_path / "scan.png")


def test_a_large_png_is_reduced_once_decoded_within_one_level_of_the_full_size_output(
    tmp_path, tiny_model_and_processor
):
    image_processor = tiny_model_and_processor[1].image_processor
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((1024, 768), Image.Resampling.BICUBIC).save(tmp_path / "scan.png")
    reduced = open_image(tmp_path / "scan.png", max_pixels=512 * 384)
    # Reduced by 2: φ's processor reads 4 times fewer pixels. Its 32 px input is a twelfth of the reduced image's short
    # side (224 px is a ninth of a 6000×4000 photo reduced by 2: also within one level, measured).
    assert reduced.size == (512, 384)
    full = image_processor(open_image(tmp_path / "scan.png"), return_tensors="pt")["pixel_values"]
    small = image_processor(reduced, return_tensors="pt")["pixel_values"]
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    assert ((full - small).abs() * std).max() <= 1 / 255 + 1e-6
