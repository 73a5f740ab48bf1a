"""Tests for tippo_rl.data_collator: rows → a model batch (images or cached features, labels), and each row it
refuses (named by its sample)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from PIL import Image

from tippo_rl import TIPPoDataCollator, load_artmuse
from tippo_rl.data import DataValidationError


@pytest.fixture
def folder(tmp_path):
    """A folder with one good image, a.png."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    return tmp_path


def test_collator_batch(tiny_model_and_processor, demo_dataset_dir):
    processor = tiny_model_and_processor[1]
    rows = [load_artmuse(demo_dataset_dir / "train.jsonl")[i] for i in range(3)]
    batch = TIPPoDataCollator(processor)(rows)
    counts = [len(row["images"]) for row in rows]
    assert batch["image_mask"].sum(1).tolist() == counts
    assert batch["pixel_values"].shape[:2] == (3, max(counts))
    assert batch["references"] == [row["reference"] for row in rows]
    assert batch["titles"] == [row["title"] for row in rows] and batch["ids"] == [row["id"] for row in rows]
    assert batch["labels"].shape[0] == 3
    assert "labels" not in TIPPoDataCollator(processor, with_labels=False)(rows)


def test_collator_rejects_sample_without_images(tiny_model_and_processor):
    rows = [
        {"id": "ok", "title": "t", "images": [Image.new("RGB", (8, 8))], "reference": "r"},
        {"id": "row-7", "title": "t", "images": [], "reference": "r"},
    ]
    with pytest.raises(DataValidationError, match="sample 'row-7': field 'images' has 0 images; TIPPo takes 1 to 5"):
        TIPPoDataCollator(tiny_model_and_processor[1])(rows)


def test_collator_rejects_sample_with_too_many_images(tiny_model_and_processor):
    rows = [{"id": "big", "title": "t", "images": [Image.new("RGB", (8, 8))] * 6, "reference": "r"}]
    with pytest.raises(DataValidationError, match="sample 'big': field 'images' has 6 images; TIPPo takes 1 to 5"):
        TIPPoDataCollator(tiny_model_and_processor[1])(rows)


def test_collator_stacks_cached_features_with_padding():
    rows = [
        {"title": "t", "reference": "r", "image_features": [[1.0, 2.0]], "title_features": [0.0, 1.0]},
        {"title": "t", "reference": "r", "image_features": [[3.0, 4.0], [5.0, 6.0]], "title_features": [1.0, 0.0]},
    ]
    batch = TIPPoDataCollator.stack_features(rows)
    assert batch["image_features"].tolist() == [[[1.0, 2.0], [0.0, 0.0]], [[3.0, 4.0], [5.0, 6.0]]]
    assert batch["image_mask"].tolist() == [[True, False], [True, True]]
    assert torch.equal(batch["title_features"], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_a_reference_longer_than_the_target_length_is_said_once_per_sample(tiny_model_and_processor, caplog):
    processor = tiny_model_and_processor[1]
    collator = TIPPoDataCollator(processor)
    image = Image.new("RGB", (8, 8), "red")
    rows = [
        {"id": "long", "title": "t", "images": [image], "reference": "a red circle. " * 14000},
        {"id": "short", "title": "t", "images": [image], "reference": "a red circle."},
    ]
    with caplog.at_level(logging.WARNING, logger="tippo_rl.data_collator"):
        labels = collator(rows)["labels"]
        collator(rows)
    assert labels.shape[1] == processor.max_target_length
    [record] = [record for record in caplog.records if "reference has" in record.getMessage()]
    assert re.search(
        r"sample 'long': reference has \d+ tokens \(196000 characters\); trained on its first 64", record.getMessage()
    )


def test_a_python_dataset_whose_target_is_named_text_is_refused_not_trained_on_empty_labels(
    tiny_model_and_processor, folder
):
    rows = [{"id": "s1", "title": "t", "images": [Image.open(folder / "a.png")], "text": "the target"}]
    with pytest.raises(
        DataValidationError, match=r"sample 's1' has no column 'reference'.*its columns: id, title, images, text"
    ):
        TIPPoDataCollator(tiny_model_and_processor[1])(rows)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_of_references_tokenised_once_are_the_processor_s(
    tiny_model_and_processor, demo_dataset_dir, padding_side
):
    import copy

    processor = copy.deepcopy(tiny_model_and_processor[1])
    processor.tokenizer.padding_side = padding_side
    references = load_artmuse(demo_dataset_dir / "train.jsonl")["reference"]
    references = [references[0] * 6, *references[1:]]  # the first one longer than max_target_length: cut
    collator = TIPPoDataCollator(processor)
    for start in (0, 2, 0, 1):  # batches that repeat references
        batch = references[start : start + 5]
        assert torch.equal(collator.labels(batch), processor.tokenize_references(batch))
    assert len(collator._reference_ids) == len(set(references[:7]))  # each distinct one once
    processor.max_target_length = 8  # another length: the ids are tokenised again
    assert torch.equal(collator.labels(references[:3]), processor.tokenize_references(references[:3]))
