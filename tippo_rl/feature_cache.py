"""Frozen-feature cache: φ never trains, so its outputs are computed once per dataset and stored.

`cache_frozen_features` adds `image_features` (N_i × d_φ per row) and `title_features` (d_φ) columns with
`datasets.Dataset.map`. The cache file's name is a fingerprint of the dataset, the image files' sizes and
modification times, the encoder's weights and the processor's settings, so changing any of them computes
the features again instead of reusing stale ones; a file that fails its manifest (truncated, corrupted) is computed
again too (`tippo_rl.caches`). `training_datasets` is what the trainers call: the columns checked,
then `cache_features_for_training`: the cache when `use_feature_cache` is on and φ frozen, the images left undecoded
otherwise. `with_frozen_features` encodes a PPO rollout batch with φ once for all its passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch
from datasets import Dataset, Image, List, are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from tqdm.auto import tqdm
from transformers.integrations import is_deepspeed_zero3_enabled

from .caches import cache_root, cached_file
from .data import DataValidationError, check_dataset_columns
from .data_collator import TIPPoDataCollator
from .modeling_tippo import TIPPoForConditionalGeneration
from .processing_tippo import TIPPoProcessor


CACHE_VERSION = 2  # 2: each distinct image and title encoded once


def undecoded_images(dataset: Dataset) -> Dataset:
    """`dataset` with its `images` column as `{path, bytes}` dicts: nothing is decoded when rows are read (the
    collator decodes them at a bounded size, `processing_tippo.open_image`). Without such a column, `dataset`."""
    if not isinstance(dataset.features.get("images"), List) or not isinstance(
        dataset.features["images"].feature, Image
    ):
        return dataset
    were_disabled = are_progress_bars_disabled()
    disable_progress_bars()  # the stored bytes do not change: no progress worth a bar
    try:
        return dataset.cast_column("images", List(Image(decode=False)))
    finally:
        if not were_disabled:
            enable_progress_bars()


def encoder_fingerprint(model: TIPPoForConditionalGeneration) -> str:
    """A hash of the frozen encoder's weights (what its features depend on)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset, processor: TIPPoProcessor) -> str:
    """A hash of the rows, each image file's size and mtime, and the processor's preprocessing settings."""
    digest = hashlib.sha256(dataset._fingerprint.encode())
    for images in undecoded_images(dataset)["images"]:
        for image in images:
            if image.get("path") and os.path.exists(image["path"]):
                stat = os.stat(image["path"])
                digest.update(f"{image['path']}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str).encode())
    digest.update(json.dumps(processor.title_tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(str(processor.max_title_length).encode())
    return digest.hexdigest()[:16]


def cache_frozen_features(
    dataset: Dataset,
    model: TIPPoForConditionalGeneration,
    processor: TIPPoProcessor,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
) -> Dataset:
    """Return `dataset` with `image_features` and `title_features` columns computed by `model.encoder`, and its
    `images` column left undecoded (paths only), since the features replace the pixels.

    Args:
        cache_dir: where the Arrow cache file goes (default: `features/` under `tippo_rl.caches.cache_root()`,
            `~/.cache/tippo_rl/features`). A later call with the same dataset, images, encoder and processor loads it
            instead of recomputing, after checking it against the manifest written beside it (`tippo_rl.caches`): a
            damaged file is said and computed again.
        batch_size: samples encoded at once.
    """
    cache_dir = Path(cache_dir) if cache_dir else cache_root() / "features"
    with gathered_encoder(model):
        return _cache_frozen_features(dataset, model, processor, cache_dir, batch_size)


def gathered_encoder(model: TIPPoForConditionalGeneration):
    """Under DeepSpeed ZeRO-3 transformers partitions every parameter when the model is built; the encoder's weights
    must be gathered before it can run outside the engine. Elsewhere a no-op."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.encoder.parameters()), modifier_rank=None)


def image_key(image: dict) -> str:
    """What identifies an undecoded image (`{path, bytes}`): its bytes' hash where stored, else its path."""
    return hashlib.sha1(image["bytes"]).hexdigest() if image.get("bytes") else f"path:{image['path']}"


def _cache_frozen_features(
    dataset: Dataset, model: TIPPoForConditionalGeneration, processor: TIPPoProcessor, cache_dir: Path, batch_size: int
) -> Dataset:
    fingerprint = hashlib.sha256(
        (dataset_fingerprint(dataset, processor) + encoder_fingerprint(model) + f"v{CACHE_VERSION}").encode()
    ).hexdigest()[:16]
    cache_file = cache_dir / f"tippo-features-{fingerprint}.arrow"
    # The features replace the pixels: rows never decode their images (the paths stay, for rewards and reports); the
    # collator decodes them at a bounded size where needed.
    undecoded = undecoded_images(dataset)

    def check(path: Path) -> None:  # a cache file written before manifests: it opens and holds every row
        loaded = Dataset.from_file(str(path))
        if len(loaded) != len(undecoded) or not {"image_features", "title_features"} <= set(loaded.column_names):
            raise ValueError(f"{len(loaded)} rows and columns {loaded.column_names}, expected {len(undecoded)} rows")

    with cached_file(cache_file, check) as build:
        features = {}
        if build:
            was_training = model.training
            model.eval()
            try:
                features = unique_image_and_title_features(undecoded, model, processor, batch_size)
            finally:
                model.train(was_training)

        def look_up(row: dict) -> dict:
            return {
                "image_features": [features[image_key(image)] for image in row["images"]],
                "title_features": features[("title", row["title"])],
            }

        return undecoded.map(
            look_up,
            cache_file_name=str(cache_file),
            load_from_cache_file=not build,
            new_fingerprint=fingerprint,
            desc="Caching frozen Chinese-CLIP features",
        )


def unique_image_and_title_features(
    dataset: Dataset, model: TIPPoForConditionalGeneration, processor: TIPPoProcessor, batch_size: int
) -> dict:
    """φ's output for each distinct image and title of `dataset` (undecoded images), computed once each — a dataset
    with five captions per image (COCO) holds each image five times: `{image_key: (d_φ,), ("title", text): (d_φ,)}`."""
    images, first_sample = {}, {}  # each distinct image, and the first sample that holds it (named in errors)
    for sample, row_images in zip(
        dataset["id"] if "id" in dataset.column_names else range(len(dataset)), dataset["images"]
    ):
        for image in row_images:
            key = image_key(image)  # a hash of the bytes where stored: once per image
            images.setdefault(key, image)
            first_sample.setdefault(key, sample)
    titles = list(dict.fromkeys(dataset["title"]))
    # One pseudo-row per distinct image (with a title while titles last): φ's image and text towers are separate.
    rows = [
        {"images": [image], "title": titles[index] if index < len(titles) else "", "id": first_sample[key], "key": key}
        for index, (key, image) in enumerate(images.items())
    ]
    rows += [{"images": [next(iter(images.values()))], "title": title, "key": None} for title in titles[len(rows) :]]
    collator = TIPPoDataCollator(processor, with_labels=False)
    device = next(model.encoder.parameters()).device
    features = {}
    for start in tqdm(range(0, len(rows), batch_size), desc="Encoding images with the frozen Chinese-CLIP", delay=5):
        batch = rows[start : start + batch_size]
        inputs = collator(batch)
        with torch.no_grad():
            image_features, title_features = model.encode_frozen_features(
                inputs["pixel_values"].to(device),
                inputs["image_mask"].to(device),
                inputs["title_input_ids"].to(device),
                inputs["title_attention_mask"].to(device),
            )
        for row, image_row, title_row in zip(
            batch, image_features.float().cpu().numpy(), title_features.float().cpu().numpy()
        ):
            if row["key"] is not None:
                features[row["key"]] = image_row[0]
            features.setdefault(("title", row["title"]), title_row)
    return features


def with_frozen_features(
    tippo: TIPPoForConditionalGeneration, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Model inputs with φ's outputs (`image_features`, `title_features`) in place of the pixels and title tokens when
    they hold pixels and φ is frozen (a PPO rollout batch: encoded once for all its passes); else `inputs` as given."""
    if "pixel_values" not in inputs or not tippo.config.freeze_encoder:
        return inputs
    image_features, title_features = tippo.encode_frozen_features(
        inputs["pixel_values"], inputs["image_mask"], inputs["title_input_ids"], inputs["title_attention_mask"]
    )
    prompt = {name: inputs[name] for name in ("prompt_input_ids", "prompt_attention_mask") if name in inputs}
    return {
        "image_features": image_features,
        "image_mask": inputs["image_mask"],
        "title_features": title_features,
        **prompt,
    }


def training_datasets(
    args,
    tippo: TIPPoForConditionalGeneration,
    processor: TIPPoProcessor,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    require_train_reference: bool = True,
) -> tuple[Dataset, Dataset | None]:
    """A trainer's (train, eval) datasets: their columns checked (the error names the dataset), then the frozen
    features cached (`cache_features_for_training`). The eval dataset always needs its references: it is scored."""
    check_dataset_columns(train_dataset, "train_dataset", require_reference=require_train_reference)
    if eval_dataset is None and getattr(args, "eval_strategy", "no") != "no":
        raise DataValidationError(
            f"--eval_strategy {getattr(args.eval_strategy, 'value', args.eval_strategy)} evaluates on an evaluation "
            "split, and the data has none: give one (--eval_file, --coco_eval_annotations, --dataset_test_split) or "
            "set --eval_strategy no"
        )
    if eval_dataset is not None:
        check_dataset_columns(eval_dataset, "eval_dataset")
    return cache_features_for_training(args, tippo, processor, train_dataset, eval_dataset)


def cache_features_for_training(args, tippo: TIPPoForConditionalGeneration, processor: TIPPoProcessor, *datasets):
    """`datasets` with cached frozen-encoder features when `args.use_feature_cache` and φ is frozen (else with their
    images left undecoded, `undecoded_images`; None stays None). `tippo` is the unwrapped model. Every process reads
    the same cache file; the main process writes it first."""
    if not (args.use_feature_cache and tippo.config.freeze_encoder):
        # The collator decodes the images itself, at a bounded size (see `processing_tippo.open_image`).
        return tuple(None if dataset is None else undecoded_images(dataset) for dataset in datasets)
    with args.main_process_first(desc="caching frozen encoder features"):
        return tuple(
            None if dataset is None else cache_frozen_features(dataset, tippo, processor, args.feature_cache_dir)
            for dataset in datasets
        )
