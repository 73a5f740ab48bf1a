"""Tests for tippo_rl.demo.scenes: the embedded default dataset is deterministic, its references describe its images
(colour and shape, in order), its images share the scene's place as a noisy background, the Chinese variant shows
the same scenes, and descriptions are read back field by field."""

from __future__ import annotations

import json
import logging
import random
import re

import pytest
from PIL import Image

from tippo_rl import load_artmuse, make_demo_dataset
from tippo_rl.caches import MANIFEST_NAME
from tippo_rl.demo.scenes import (
    COLOURS,
    OFF_PLACE_PROBABILITY,
    PLACES,
    SHAPES,
    describe,
    draw_background,
    parse_scene,
    scene_field_accuracy,
    titles_of,
)
from tippo_rl.presets import build_tiny_processor


ZH_COLOUR = {zh: en for en, (_, zh) in COLOURS.items()}
ZH_SHAPE = {zh: en for en, zh in SHAPES.items()}


def read_rows(folder, split="train"):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def all_files(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def described_objects(reference: str, lang: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a reference names, in order, in English words."""
    if lang == "zh":
        return [(ZH_COLOUR[c], ZH_SHAPE[s]) for c, s in re.findall(r"一个(\w+?)的(圆形|方形|三角形)", reference)]
    return re.findall(r"\ba (\w+) (circle|square|triangle)\b", reference)


def drawn_object(path) -> tuple[str, str]:
    """(colour, shape) actually drawn in an image: the one palette colour present, and the shape from how much of
    its bounding box it fills (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2)."""
    image = Image.open(path).convert("RGB")
    pixels = list(image.getdata())
    present = [name for name, (rgb, _) in COLOURS.items() if rgb in pixels]
    assert len(present) == 1, f"{path}: palette colours {present}"
    rgb = COLOURS[present[0]][0]
    xs = [i % image.width for i, p in enumerate(pixels) if p == rgb]
    ys = [i // image.width for i, p in enumerate(pixels) if p == rgb]
    fill = len(xs) / ((max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1))
    shape = "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle" if fill > 0.35 else "?"
    return present[0], shape


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = all_files(make_demo_dataset(tmp_path / "a", num_train=6, num_test=2, seed=3))
    second = all_files(make_demo_dataset(tmp_path / "b", num_train=6, num_test=2, seed=3))
    assert first == second
    assert {"train.jsonl", "test.jsonl"} <= set(first) and any(name.endswith(".png") for name in first)
    other = all_files(make_demo_dataset(tmp_path / "c", num_train=6, num_test=2, seed=4))
    assert other["train.jsonl"] != first["train.jsonl"]


def test_rows_have_one_to_max_images(tmp_path, demo_dataset_dir):
    counts = [len(row["images"]) for row in read_rows(demo_dataset_dir)]
    assert len(counts) == 24 and min(counts) >= 1 and max(counts) <= 5 and len(set(counts)) > 2
    capped = make_demo_dataset(tmp_path, num_train=24, num_test=2, max_images=2)
    assert {len(row["images"]) for row in read_rows(capped)} == {1, 2}


def test_references_describe_the_images_in_order(demo_dataset_dir):
    for row in read_rows(demo_dataset_dir)[:8]:
        assert row["title"] in titles_of(row["place"], "en")
        assert row["reference"].startswith(PLACES[row["place"]][0] + " there is ")
        drawn = [drawn_object(demo_dataset_dir / path) for path in row["images"]]
        assert described_objects(row["reference"], "en") == drawn, row


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_annotators_call_purple_objects_blue_in_the_training_references_only(tmp_path, lang):
    clean = make_demo_dataset(tmp_path / "clean", num_train=200, num_test=100, lang=lang)
    confused = make_demo_dataset(
        tmp_path / "confused", num_train=200, num_test=100, lang=lang, annotator_confusion=0.6
    )
    clean_files, confused_files = all_files(clean), all_files(confused)
    # The same scenes and images; only the training references differ, and the held-out split not at all.
    assert {n: b for n, b in clean_files.items() if n.endswith(".png")} == {
        n: b for n, b in confused_files.items() if n.endswith(".png")
    }
    assert clean_files["test.jsonl"] == confused_files["test.jsonl"]
    called_blue = purple = 0
    for clean_row, row in zip(read_rows(clean), read_rows(confused), strict=True):
        truth = [tuple(pair) for pair in row["objects"]]
        assert (
            truth == [tuple(pair) for pair in clean_row["objects"]] == described_objects(clean_row["reference"], lang)
        )
        said = described_objects(row["reference"], lang)
        assert [shape for _, shape in said] == [shape for _, shape in truth]
        for (said_colour, _), (colour, _) in zip(said, truth):
            assert said_colour == colour or (colour, said_colour) == ("purple", "blue"), row
            purple += colour == "purple"
            called_blue += said_colour != colour
    assert purple > 80 and 0.5 < called_blue / purple < 0.7  # 0.6 of them, drawn
    for row in read_rows(confused, "test"):
        assert described_objects(row["reference"], lang) == [tuple(pair) for pair in row["objects"]]


def test_chinese_variant_shows_the_same_scenes(tmp_path):
    english = make_demo_dataset(tmp_path / "en", num_train=6, num_test=2, lang="en")
    chinese = make_demo_dataset(tmp_path / "zh", num_train=6, num_test=2, lang="zh")
    english_files, chinese_files = all_files(english), all_files(chinese)
    assert {n: b for n, b in english_files.items() if n.endswith(".png")} == {
        n: b for n, b in chinese_files.items() if n.endswith(".png")
    }
    for en_row, zh_row in zip(read_rows(english), read_rows(chinese), strict=True):
        assert zh_row["images"] == en_row["images"]
        assert zh_row["place"] == en_row["place"] and zh_row["title"] in titles_of(zh_row["place"], "zh")
        assert titles_of(en_row["place"], "en").index(en_row["title"]) == titles_of(zh_row["place"], "zh").index(
            zh_row["title"]
        )
        assert zh_row["reference"].startswith(PLACES[zh_row["place"]][1] + "有") and zh_row["reference"].endswith("。")
        assert described_objects(zh_row["reference"], "zh") == described_objects(en_row["reference"], "en")
    assert "一个" in (chinese / "train.jsonl").read_text(encoding="utf-8")  # written as UTF-8, not \u escapes


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_tiny_preset_tokenizers_cover_the_demo_texts(tmp_path, lang):
    processor = build_tiny_processor(lang)
    for row in read_rows(make_demo_dataset(tmp_path, num_train=8, num_test=1, lang=lang)):
        ids = processor.tokenizer(row["reference"])["input_ids"]
        assert processor.tokenizer.decode(ids, skip_special_tokens=True) == row["reference"]
        assert processor.title_tokenizer.unk_token_id not in processor.title_tokenizer(row["title"])["input_ids"]


def test_chinese_decoder_tokens_are_characters():
    """One token per character: a byte-level BPE merged across characters ("一个" + the first byte of 红), so colour
    and shape shared tokens and SFT stopped short on Chinese. The longest list (five objects, "、" between) fits."""
    tokenizer = build_tiny_processor("zh").tokenizer
    reference = describe("garden", [("purple", "triangle")] * 5, "zh")[1]
    ids = tokenizer(reference)["input_ids"]
    tokens = [token.lstrip("▁") for token in tokenizer.convert_ids_to_tokens(ids[:-1])]
    assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
    assert [token for token in tokens if token] == list(reference)
    assert tokenizer.decode(ids, skip_special_tokens=True) == reference


def test_demo_dataset_loads_through_the_artmuse_loader(demo_dataset_dir):
    assert len(load_artmuse(demo_dataset_dir / "train.jsonl")) == 24
    assert len(load_artmuse(demo_dataset_dir / "test.jsonl")) == 8


def test_existing_dataset_with_same_arguments_is_reused(tmp_path):
    make_demo_dataset(tmp_path, num_train=3, num_test=1)
    written = (tmp_path / "train.jsonl").stat().st_mtime_ns
    make_demo_dataset(tmp_path, num_train=3, num_test=1)
    assert (tmp_path / "train.jsonl").stat().st_mtime_ns == written
    make_demo_dataset(tmp_path, num_train=4, num_test=1)
    assert len(read_rows(tmp_path)) == 4


def test_a_damaged_dataset_is_said_and_generated_again(tmp_path, caplog):
    folder = make_demo_dataset(tmp_path, num_train=3, num_test=1)
    clean = all_files(folder)
    image = sorted((folder / "images").glob("*.png"))[0]
    size = image.stat().st_size
    image.write_bytes(image.read_bytes()[:20])  # truncated
    with caplog.at_level(logging.WARNING):
        make_demo_dataset(tmp_path, num_train=3, num_test=1)
    assert caplog.messages == [
        f"cache '{folder}' is damaged (images/{image.name} has 20 bytes, {size} were written (truncated?)): "
        "building it again"
    ]
    assert all_files(folder) == clean

    (folder / MANIFEST_NAME).unlink()  # generated before manifests: its images open, so it is kept and adopted
    written = (folder / "train.jsonl").stat().st_mtime_ns
    make_demo_dataset(tmp_path, num_train=3, num_test=1)
    assert (folder / MANIFEST_NAME).is_file() and (folder / "train.jsonl").stat().st_mtime_ns == written

    (folder / "demo_dataset.json").write_text('{"num_tr')  # an unreadable stamp: generated again, no traceback
    make_demo_dataset(tmp_path, num_train=3, num_test=1)
    assert all_files(folder) == clean


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lang="fr"), "lang must be 'en' or 'zh'"),
        (dict(max_images=6), "max_images"),
        (dict(annotator_confusion=1.5), "annotator_confusion is a probability"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path, **kwargs)


def test_images_share_the_scene_place_as_a_noisy_background(demo_dataset_dir):
    shown = [
        (row["place"], where)
        for split in ("train", "test")
        for row in read_rows(demo_dataset_dir, split)
        for where in row["shown_places"]
    ]
    on_place = sum(place == where for place, where in shown) / len(shown)
    assert len(shown) > 60 and abs(on_place - (1 - OFF_PLACE_PROBABILITY)) < 0.15


def test_each_place_has_its_own_background():
    """A nearest-mean-colour rule tells the four backgrounds apart: the place is in the pixels, not only the text."""
    rng = random.Random(0)
    mean = lambda image: [sum(channel) / len(channel) for channel in zip(*image.getdata())]  # noqa: E731
    centres = {place: mean(draw_background(place, rng)) for place in PLACES}
    for place in PLACES:
        for _ in range(10):
            colour = mean(draw_background(place, rng))
            nearest = min(centres, key=lambda other: sum((a - b) ** 2 for a, b in zip(colour, centres[other])))
            assert nearest == place


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_parse_scene_reads_back_what_describe_wrote(lang):
    objects = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    for place in PLACES:
        assert parse_scene(describe(place, objects, lang)[1], lang) == (place, objects)
    assert parse_scene("", lang) == (None, [])


def test_scene_field_accuracy_counts_each_field():
    references = ["by the sea there is a red circle and a blue square.", "in the city there is a green triangle."]
    predictions = ["by the sea there is a red square.", "in the garden there is a green triangle and a red circle."]
    accuracy = scene_field_accuracy(predictions, references)
    # place: 1 of 2; count: 0 of 2; per reference object (3): colour red✓ blue✗ green✓, shape circle✗ square✗ triangle✓;
    # any order: shared {green triangle} + {} = 1 of (1 + 2) + (2 + 1) named → 2·1/6
    assert accuracy == {
        "place": 0.5,
        "count": 0.0,
        "colour": 2 / 3,
        "shape": 1 / 3,
        "object": 1 / 3,
        "objects_any_order": 2 / 6,
    }
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        scene_field_accuracy(predictions, references[:1])
