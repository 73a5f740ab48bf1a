"""The collator: rows of a TIPPo dataset (`tippo_rl.data`) → the batch `TIPPoForConditionalGeneration` takes; and `model_inputs`, the
part of a batch that goes into the model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image as PILImage

from .data import DataValidationError
from .processing_tippo import TIPPoProcessor, open_image, padded_labels


logger = logging.getLogger(__name__)


class TIPPoDataCollator:
    """Rows of a TIPPo dataset → a model batch.

    Rows carrying cached frozen features (`image_features`, `title_features`; see `feature_cache`) skip the
    image processor; otherwise images are processed here. The batch also carries the raw `references`,
    `titles` and `ids` (lists, not tensors) for trainers that score generations.
    """

    # Distinct references whose token ids `labels` keeps (a training run collates each reference once per epoch).
    MAX_CACHED_REFERENCES = 200_000

    def __init__(self, processor: TIPPoProcessor, with_labels: bool = True):
        self.processor = processor
        self.with_labels = with_labels
        self._truncated_ids: set[str] = set()  # samples whose reference was cut, already reported
        self._reference_ids: dict[str, list[int]] = {}  # reference → its token ids, for the tokenizer of _ids_of
        self._ids_of: tuple | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        if self.with_labels:
            self.check_references(rows)
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
        if self.processor.causal_lm:  # the decoder's prompt tokens: never cached (φ does not read them)
            batch.update(self.processor.tokenize_prompts([row["title"] for row in rows]))
        if self.with_labels:
            batch["labels"] = self.labels(references)
            self.warn_about_cut_references(rows, batch["labels"])
        batch["references"] = references
        batch["titles"] = [row["title"] for row in rows]
        batch["ids"] = [row.get("id", "") for row in rows]
        return batch

    def labels(self, references: Sequence[str]) -> torch.Tensor:
        """`processor.tokenize_references(references)`, each distinct reference tokenised once (up to
        `MAX_CACHED_REFERENCES` of them) and the batch padded here: the tokenizer's batch call cost ~0.8 ms a batch of
        16, 1.5 s of a demo SFT run that collates every reference 14 times. An encoder-decoder's labels only (a causal
        decoder's go to the processor)."""
        processor, tokenizer = self.processor, self.processor.tokenizer
        if processor.causal_lm:
            return processor.tokenize_references(references)
        settings = (id(tokenizer), processor.max_target_length)
        if self._ids_of != settings:  # another tokenizer or length since the last batch
            self._reference_ids, self._ids_of = {}, settings
        rows = []
        for text in references:
            ids = self._reference_ids.get(text)
            if ids is None:
                ids = tokenizer(text, truncation=True, max_length=processor.max_target_length)["input_ids"]
                if len(self._reference_ids) < self.MAX_CACHED_REFERENCES:
                    self._reference_ids[text] = ids
            rows.append(ids)
        return padded_labels(rows, left=tokenizer.padding_side == "left")

    @staticmethod
    def check_references(rows: Sequence[dict]) -> None:
        """Training targets must exist: a dataset whose target column has another name (`text`, `caption`) would
        otherwise train on empty labels."""
        for row in rows:
            reference = row.get("reference")
            if not isinstance(reference, str) or not reference.strip():
                problem = (
                    "has no column 'reference'"
                    if "reference" not in row
                    else f"has an empty 'reference' ({reference!r})"
                )
                raise DataValidationError(
                    f"sample '{row.get('id', '')}' {problem}, the target text (its columns: {', '.join(row)}); name the "
                    "target column 'reference' (dataset.rename_column('text', 'reference')), or load the dataset with "
                    "tippo_rl.data.load_hf_dataset(..., columns=ColumnNames(reference='text')) (--reference_column text)"
                )

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
                    "the processor's %s)",
                    sample,
                    length,
                    len(row.get("reference", "")),
                    limit,
                    "tippo_processor_config.json",
                )

    @staticmethod
    def decode(row: dict, image: Any) -> PILImage.Image:
        """One image of a row (PIL, path or undecoded `{path, bytes}`) as `open_image` decodes it (8-bit RGB, at a
        bounded size); an image that fails (changed on disk since validation) is named with its sample."""
        try:
            return open_image(image)
        except ValueError as error:  # names the image and what is wrong with it
            raise DataValidationError(f"sample '{row.get('id')}': {error}") from error

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
    "prompt_input_ids",
    "prompt_attention_mask",
)


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The part of a collated batch that `TIPPoForConditionalGeneration.forward/generate` take (no labels, no raw strings)."""
    return {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}
