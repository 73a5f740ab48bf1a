"""Tests for tippo_rl.feature_cache: cached φ features give the same outputs as pixels, the cache file is reused,
and it is recomputed when the encoder's weights or an image file change."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from tippo_rl import TIPPoDataCollator, cache_frozen_features, load_artmuse, make_demo_dataset
from tippo_rl.data_collator import model_inputs


def feature_files(cache_dir) -> dict[str, int]:
    """The feature cache files in `cache_dir`, with their modification times."""
    return {path.name: path.stat().st_mtime_ns for path in cache_dir.glob("tippo-features-*.arrow")}


@pytest.fixture
def count_encoder_calls(monkeypatch):
    """`count_encoder_calls(model)` → a list that grows by one per `encode_frozen_features` call on `model`."""

    def install(model):
        calls, original = [], model.encode_frozen_features

        def counted(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "encode_frozen_features", counted)
        return calls

    return install


def test_cached_features_give_identical_outputs(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    model, processor = tiny_model_varied_outputs, tiny_model_and_processor[1]
    dataset = load_artmuse(demo_dataset_dir / "train.jsonl")
    cached = cache_frozen_features(dataset, model, processor, cache_dir=tmp_path, batch_size=8)
    assert "image_features" in cached.column_names and "title_features" in cached.column_names
    assert [len(row) for row in cached["image_features"]] == [len(images) for images in dataset["images"]]
    collator = TIPPoDataCollator(processor)

    # Rows 8–15 were one batch of the cache, so φ saw exactly the same inputs: everything matches bit for bit.
    rows = range(8, 16)
    from_pixels = collator([dataset[i] for i in rows])
    from_cache = collator([cached[i] for i in rows])
    assert "pixel_values" not in from_cache and "title_input_ids" not in from_cache
    assert torch.equal(from_cache["labels"], from_pixels["labels"])
    assert torch.equal(from_cache["image_mask"], from_pixels["image_mask"])
    with torch.no_grad():
        logits_pixels = model(**model_inputs(from_pixels), labels=from_pixels["labels"]).logits
        logits_cache = model(**model_inputs(from_cache), labels=from_cache["labels"]).logits
    assert torch.equal(logits_cache, logits_pixels)
    generated = model.generate(**model_inputs(from_pixels), max_new_tokens=8, do_sample=False)
    assert (generated[:, 1:] != model.config.pad_token_id).any()  # not a vacuous all-padding comparison
    assert torch.equal(model.generate(**model_inputs(from_cache), max_new_tokens=8, do_sample=False), generated)

    # Rows from two cache batches: φ saw other batch shapes (titles padded to another length), which moves the
    # features by float round-off only (~1e-7).
    rows = range(4, 10)
    from_pixels = collator([dataset[i] for i in rows])
    from_cache = collator([cached[i] for i in rows])
    with torch.no_grad():
        image_features, title_features = model.encode_frozen_features(
            from_pixels["pixel_values"],
            from_pixels["image_mask"],
            from_pixels["title_input_ids"],
            from_pixels["title_attention_mask"],
        )
    torch.testing.assert_close(from_cache["image_features"], image_features, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_cache["title_features"], title_features, rtol=0, atol=1e-6)


def test_cache_is_reused_on_a_second_call(tmp_path, tiny_model_and_processor, demo_dataset_dir, count_encoder_calls):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    calls = count_encoder_calls(model)
    first = cache_frozen_features(load_artmuse(demo_dataset_dir / "test.jsonl"), model, processor, cache_dir=tmp_path)
    assert calls and len(feature_files(tmp_path)) == 1
    files, n_calls = feature_files(tmp_path), len(calls)

    # A fresh load of the same file (as a second run would do) finds the same cache file and encodes nothing.
    second = cache_frozen_features(load_artmuse(demo_dataset_dir / "test.jsonl"), model, processor, cache_dir=tmp_path)
    assert len(calls) == n_calls
    assert feature_files(tmp_path) == files  # same file, not rewritten
    assert second["image_features"] == first["image_features"]


def test_caching_restores_training_mode(tmp_path, tiny_model_and_processor, demo_dataset_dir):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    model.train()
    cache_frozen_features(load_artmuse(demo_dataset_dir / "test.jsonl"), model, processor, cache_dir=tmp_path)
    assert model.training and model.language_model.training and not model.encoder.training


def test_cache_is_invalidated_when_encoder_weights_change(tmp_path, tiny_model_and_processor, demo_dataset_dir):
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    dataset = load_artmuse(demo_dataset_dir / "test.jsonl")
    before = cache_frozen_features(dataset, model, processor, cache_dir=tmp_path)
    with torch.no_grad():
        model.encoder.visual_projection.weight.mul_(2.0)  # φ(I) doubles; φ(T) is unchanged
    after = cache_frozen_features(dataset, model, processor, cache_dir=tmp_path)
    assert len(feature_files(tmp_path)) == 2
    torch.testing.assert_close(torch.tensor(after[0]["image_features"]), 2 * torch.tensor(before[0]["image_features"]))
    assert after["title_features"] == before["title_features"]


def test_cache_is_invalidated_when_an_image_file_changes(tmp_path, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    data_dir = make_demo_dataset(tmp_path / "data", num_train=3, num_test=1)
    dataset = load_artmuse(data_dir / "train.jsonl")
    before = cache_frozen_features(dataset, model, processor, cache_dir=tmp_path / "cache")

    changed = dataset[0]["images"][0].filename
    Image.new("RGB", (64, 64), (0, 0, 0)).save(changed)  # rewrite one image in place; the JSONL is untouched
    reloaded = load_artmuse(data_dir / "train.jsonl")
    after = cache_frozen_features(reloaded, model, processor, cache_dir=tmp_path / "cache")
    assert len(feature_files(tmp_path / "cache")) == 2
    assert after[0]["image_features"][0] != before[0]["image_features"][0]  # the rewritten image
    assert after[0]["image_features"][1:] == before[0]["image_features"][1:]  # the sample's other images
    assert after["image_features"][1:] == before["image_features"][1:]  # the other samples


def test_evaluating_without_an_evaluation_split_is_refused_before_any_work(
    tmp_path, tiny_model_and_processor, demo_dataset_dir
):
    from tippo_rl.data import DataValidationError
    from tippo_rl.feature_cache import training_datasets
    from tippo_rl.trainer.ppo_config import PPOConfig

    model, processor = tiny_model_and_processor
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    args = PPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        max_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        feature_cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataValidationError, match="--eval_strategy steps evaluates on an evaluation split"):
        training_datasets(args, model, processor, train, None)
    args.eval_strategy = "no"
    assert training_datasets(args, model, processor, train, None)[1] is None
