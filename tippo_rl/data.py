"""Datasets for TIPPo: ArtMuse-style JSONL and COCO-CN-style captions, validated at load time, and the collator.

Every row becomes `{id, title, images, reference, references}` in a `datasets.Dataset` whose `images`
column is a list of `datasets.Image()`. Bad rows raise an error naming the file, row and field, or — with
`on_error="skip"` (`--on_bad_rows skip` in the recipes) — are dropped with a counted warning. Nothing is dropped
silently. Every image is decoded once when its row is checked (JPEG at 1/8 scale: cheap), so a truncated file is a bad
row, not a crash later in training.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from .processing_tippo import TIPPoProcessor, open_image

logger = logging.getLogger(__name__)

FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "images": List(Image()),
        "reference": Value("string"),
        "references": List(Value("string")),
    }
)


class DataValidationError(ValueError):
    """A row of a dataset file is unusable; the message names the file, row and field."""


def check_image(path: Path) -> None:
    """Raise `ValueError` with the reason if `path` is not an image that decodes to its end.

    The whole file is decoded (a truncated or corrupt one fails here, not in training); a JPEG at 1/8 scale, which
    reads every byte at a fraction of the cost and memory."""
    if path.is_dir():
        raise ValueError(f"image '{path}' is a folder, not an image file")
    if not path.is_file():
        raise ValueError(f"image '{path}' does not exist")
    try:
        with PILImage.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            image.load()
    except Exception as error:  # PIL raises many types for corrupt files
        raise ValueError(f"image '{path}' cannot be opened: {error}") from error


def _finish(rows: list[dict], problems: Counter, source: str, on_error: str) -> Dataset:
    if problems:
        logger.warning(
            "%s: skipped %d bad rows (%s); to stop at the first one and see its line, use --on_bad_rows raise "
            "(on_error='raise' in Python)",
            source,
            sum(problems.values()),
            ", ".join(f"{count}× {kind}" for kind, count in problems.most_common()),
        )
    if not rows:
        raise DataValidationError(f"{source}: no usable rows")
    return Dataset.from_list(rows, features=FEATURES)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def validate_row(
    row: Any,
    image_root: Path,
    max_images: int,
    allow_empty_title: bool,
    require_reference: bool,
) -> tuple[dict, str | None]:
    """Check one ArtMuse-style row; return (clean row, None) or (None, 'field: problem')."""
    if not isinstance(row, dict):
        return None, f"row: expected a JSON object, got {type(row).__name__}"
    title = row.get("title", "")
    if not isinstance(title, str):
        return None, f"field 'title': expected a string, got {type(title).__name__}"
    if not title.strip() and not allow_empty_title:
        return None, (
            "field 'title': is empty (for captioning data without titles use --allow_empty_title true, "
            "allow_empty_title=True in Python)"
        )
    images = row.get("images")
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(path, str) for path in images):
        return None, "field 'images': expected a list of image paths"
    if not 1 <= len(images) <= max_images:
        return None, f"field 'images': has {len(images)} images, TIPPo takes 1 to {max_images}"
    paths = []
    for path in images:
        full = Path(path) if Path(path).is_absolute() else image_root / path
        try:
            check_image(full)
        except ValueError as error:
            return None, f"field 'images': {error}"
        paths.append(str(full))
    reference = row.get("reference", "")
    if not isinstance(reference, str):
        return None, f"field 'reference': expected a string, got {type(reference).__name__}"
    if require_reference and not reference.strip():
        return None, "field 'reference': is empty"
    references = row.get("references") or ([reference] if reference else [])
    if not isinstance(references, list) or not all(isinstance(text, str) for text in references):
        return None, "field 'references': expected a list of strings"
    clean = {"id": str(row.get("id", "")), "title": title, "images": paths, "reference": reference}
    clean["references"] = references
    return clean, None


def load_artmuse(
    path: str | Path,
    image_root: str | Path | None = None,
    max_images: int = 5,
    allow_empty_title: bool = False,
    require_reference: bool = True,
    on_error: str = "raise",
) -> Dataset:
    """Load ArtMuse-style JSONL: one `{"title", "images": [paths], "reference"}` object per line.

    Args:
        path: the `.jsonl` file.
        image_root: folder that relative image paths start from (default: the file's folder).
        max_images: N_max; rows with more images are bad rows.
        allow_empty_title: accept rows whose title is empty (captioning data).
        require_reference: a missing or empty reference is a bad row (set False for inference inputs).
        on_error: `"raise"` (stop at the first bad row) or `"skip"` (drop bad rows, warn with counts).
    """
    _check_on_error(on_error)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file '{path}' does not exist")
    image_root = Path(image_root) if image_root is not None else path.parent
    rows, problems = [], Counter()
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is a bad row, named, not a crash of the whole file
        for line_number, raw in enumerate(f, start=1):
            if line_number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as Windows editors write
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                clean, problem = None, f"row: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
            else:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    clean, problem = None, f"row: not valid JSON ({error.msg}, column {error.colno})"
                else:
                    clean, problem = validate_row(row, image_root, max_images, allow_empty_title, require_reference)
            if problem is None:
                clean["id"] = clean["id"] or f"{path.stem}-{line_number}"
                rows.append(clean)
                continue
            message = f"{path}, line {line_number}: {problem}"
            if on_error == "raise":
                raise DataValidationError(message)
            logger.debug(message)
            problems[problem.split(":")[0]] += 1
    return _finish(rows, problems, str(path), on_error)


def load_coco_captions(
    annotations: str | Path,
    image_dir: str | Path,
    one_row_per: str = "caption",
    on_error: str = "raise",
) -> Dataset:
    """Load COCO-CN-style captions: a COCO captions JSON (`{"images": [{"id", "file_name"}],
    "annotations": [{"image_id", "caption"}]}`) and its image folder. Titles are empty.

    Args:
        one_row_per: `"caption"` (training: one row per caption) or `"image"` (evaluation: one row per
            image, its first caption as `reference` and all of them in `references`).
    """
    _check_on_error(on_error)
    if one_row_per not in ("caption", "image"):
        raise ValueError(f"one_row_per must be 'caption' or 'image', got {one_row_per!r}")
    annotations, image_dir = Path(annotations), Path(image_dir)
    if not annotations.is_file():
        raise FileNotFoundError(f"annotation file '{annotations}' does not exist")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder '{image_dir}' does not exist")
    try:
        coco = json.loads(annotations.read_text(encoding="utf-8-sig"))
        files = {image["id"]: image["file_name"] for image in coco["images"]}
        captions: dict[Any, list[str]] = {}
        for index, annotation in enumerate(coco["annotations"]):
            caption = annotation.get("caption")
            if annotation.get("image_id") not in files:
                raise DataValidationError(
                    f"{annotations}: annotations[{index}] refers to image_id {annotation.get('image_id')!r}, "
                    "which is not in 'images'"
                )
            if not isinstance(caption, str) or not caption.strip():
                raise DataValidationError(f"{annotations}: annotations[{index}] field 'caption' is empty or not a string")
            captions.setdefault(annotation["image_id"], []).append(caption)
    except UnicodeDecodeError as error:
        raise DataValidationError(f"{annotations}: not UTF-8 text (byte offset {error.start})") from error
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataValidationError(f"{annotations}: not a COCO captions file ({error!r})") from error
    rows, problems = [], Counter()
    for image_id, texts in captions.items():
        try:
            check_image(image_dir / files[image_id])
        except ValueError as error:
            if on_error == "raise":
                raise DataValidationError(f"{annotations}: image_id {image_id}: field 'file_name': {error}") from error
            problems["field 'file_name'"] += 1
            continue
        path = str(image_dir / files[image_id])
        targets = texts if one_row_per == "caption" else texts[:1]
        for number, text in enumerate(targets):
            rows.append(
                {"id": f"{image_id}-{number}", "title": "", "images": [path], "reference": text, "references": texts}
            )
    return _finish(rows, problems, str(annotations), on_error)


class TIPPoDataCollator:
    """Rows of a TIPPo dataset → a model batch.

    Rows carrying cached frozen features (`image_features`, `title_features`; see `feature_cache`) skip the
    image processor; otherwise images are processed here. The batch also carries the raw `references`,
    `titles` and `ids` (lists, not tensors) for trainers that score generations.
    """

    def __init__(self, processor: TIPPoProcessor, with_labels: bool = True):
        self.processor = processor
        self.with_labels = with_labels
        self._truncated_ids: set[str] = set()  # samples whose reference was cut, already reported

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        references = [row.get("reference", "") for row in rows]
        if "image_features" in rows[0]:
            batch = self.stack_features(rows)
        else:
            for row in rows:
                if not 1 <= len(row["images"]) <= self.processor.max_images:
                    raise DataValidationError(
                        f"sample '{row.get('id')}': field 'images' has {len(row['images'])} images; "
                        f"TIPPo takes 1 to {self.processor.max_images}"
                    )
            images = [[self.decode(row, image) for image in row["images"]] for row in rows]
            pixel_values, image_mask = self.processor.images_to_pixels(images)
            batch = {"pixel_values": pixel_values, "image_mask": image_mask}
            batch.update(self.processor.tokenize_titles([row["title"] for row in rows]))
        if self.with_labels:
            batch["labels"] = self.processor.tokenize_references(references)
            self.warn_about_cut_references(rows, batch["labels"])
        batch["references"] = references
        batch["titles"] = [row["title"] for row in rows]
        batch["ids"] = [row.get("id", "") for row in rows]
        return batch

    def warn_about_cut_references(self, rows: Sequence[dict], labels: torch.Tensor) -> None:
        """Warn once per sample whose reference is longer than `max_target_length` tokens (the labels keep its start)."""
        limit = self.processor.max_target_length
        if labels.shape[1] < limit:
            return
        for row, row_labels in zip(rows, labels):
            sample = str(row.get("id", ""))
            if row_labels[-1] == -100 or sample in self._truncated_ids:
                continue
            length = len(self.processor.tokenizer(row.get("reference", ""), truncation=False)["input_ids"])
            if length > limit:
                self._truncated_ids.add(sample)
                logger.warning(
                    "sample '%s': reference has %d tokens (%d characters); trained on its first %d (max_target_length in "
                    "the processor's %s)", sample, length, len(row.get("reference", "")), limit, "tippo_processor_config.json",
                )

    @staticmethod
    def decode(row: dict, image: Any) -> PILImage.Image:
        """One image of a row (PIL, path or undecoded `{path, bytes}`), decoded at a bounded size; an image that fails
        to decode (changed on disk since validation) is named with its sample."""
        try:
            return open_image(image)
        except Exception as error:  # PIL raises many types for corrupt files
            name = image.get("path") if isinstance(image, dict) else getattr(image, "filename", image)
            raise DataValidationError(f"sample '{row.get('id')}': image '{name}' cannot be decoded: {error}") from error

    @staticmethod
    def stack_features(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Cached rows → image_features `(batch, N, d_φ)` zero-padded, image_mask, title_features `(batch, d_φ)`."""
        per_sample = [torch.as_tensor(row["image_features"], dtype=torch.float32) for row in rows]
        n_images = max(features.shape[0] for features in per_sample)
        image_features = per_sample[0].new_zeros(len(rows), n_images, per_sample[0].shape[-1])
        image_mask = torch.zeros(len(rows), n_images, dtype=torch.bool)
        for index, features in enumerate(per_sample):
            image_features[index, : features.shape[0]] = features
            image_mask[index, : features.shape[0]] = True
        title_features = torch.stack([torch.as_tensor(row["title_features"], dtype=torch.float32) for row in rows])
        return {"image_features": image_features, "image_mask": image_mask, "title_features": title_features}


MODEL_INPUT_NAMES = (
    "pixel_values",
    "image_mask",
    "title_input_ids",
    "title_attention_mask",
    "image_features",
    "title_features",
)


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The part of a collated batch that `TIPPoModel.forward/generate` take (no labels, no raw strings)."""
    return {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}
