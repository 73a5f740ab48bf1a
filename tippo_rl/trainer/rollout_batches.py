"""How PPO's dataloader builds rollout batches: the sampler (k consecutive rows per prompt, each rollout batch once per
minibatch it feeds) and the collator (model inputs plus every raw column, for the reward plug-ins)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset
from trl.trainer.utils import RepeatSampler

from ..data_collator import TIPPoDataCollator, model_inputs
from ..processing_tippo import TIPPoProcessor


FEATURE_COLUMNS = ("image_features", "title_features")


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose order depends on (seed, epoch) only. TRL's seeds its generator once, so a run resumed
    past the first pass over the data drew a different order than an uninterrupted one; the Trainer calls `set_epoch`
    before every pass (resumed or not), which re-seeds it here."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + epoch)


class PPODataCollator:
    """Rows → the model inputs of `TIPPoDataCollator` plus `columns`: every other dataset column as a list, for the
    reward plug-ins (`reference`, `references`, `title`, `images`, `id`, and any extra column). Images whose pixels
    were replaced by cached features are passed as their file paths."""

    def __init__(self, processor: TIPPoProcessor):
        self.collator = TIPPoDataCollator(processor, with_labels=False)

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        batch = model_inputs(self.collator(rows))
        columns = {name: [row[name] for row in rows] for name in rows[0] if name not in FEATURE_COLUMNS}
        if "images" in columns:
            columns["images"] = [[_image_or_path(image) for image in images] for images in columns["images"]]
        return {**batch, "columns": columns}


def _image_or_path(image: Any) -> Any:
    if isinstance(image, dict) and image.get("path"):  # an undecoded datasets.Image
        return image["path"]
    return image


class RolloutBatchesMixin:
    """[`PPOTrainer`]'s training dataloader: one batch is a rollout batch, ordered by `rollout_sampler`."""

    def get_train_dataloader(self):
        # One dataloader batch is a rollout batch, repeated once per minibatch it feeds (see rollout_sampler).
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self.rollout_sampler,
            is_training=True,
        )

    def rollout_sampler(self, dataset: Dataset | None = None) -> EpochSeededRepeatSampler:
        """The order of the training rows: rollout batches of `generation_batch_size / k` prompts, each k times in a row.

        Each rollout batch (global: generation_batch_size completions) comes minibatches_per_iteration times in a row,
        so the Trainer's step and epoch counting, and skipping on resume, stay right. Every process's share is a
        multiple of k consecutive rows: whole groups. Its order depends on the epoch, not on how many passes this
        process has drawn, so a resumed run sees the same order."""
        return EpochSeededRepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=self.args.num_generations,
            batch_size=self.args.generation_batch_size // self.args.num_generations,
            repeat_count=self.args.minibatches_per_iteration,
            shuffle=True,
            seed=self.args.seed,
        )
