"""Pieces both TIPPo trainers share."""

from __future__ import annotations

import copy
import zlib
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from torch import nn

from ..feature_cache import cache_frozen_features
from ..model_card import build_model_card
from ..modeling_tippo import TIPPoModel


def unwrap_tippo(model: nn.Module) -> TIPPoModel:
    """The `TIPPoModel` inside DDP/DeepSpeed (`.module`), PEFT (`.get_base_model()`), `torch.compile` (`._orig_mod`)
    and policy (`.policy`) wrappers."""
    while not isinstance(model, TIPPoModel):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "policy"):
            model = model.policy
        else:
            raise TypeError(f"expected a TIPPoModel (possibly wrapped), got {type(model).__name__}")
    return model


class StepMetrics:
    """Per-step scalar metrics kept on the device until the next log, then averaged over the steps and over all
    processes with one gather and one host copy: logging costs no host-device sync inside the update loop. Only a
    running sum per metric is kept, so memory stays constant however rarely the run logs. A NaN stays visible.

    Every process must `add` the same names between two logs (the reduction gathers one value per name, in
    sorted-name order), which holds when the names depend on the config only, as in the TIPPo trainers; in a
    multi-process run a mismatch raises an error that lists the names instead of hanging.
    """

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: torch.Tensor | float, device: torch.device) -> None:
        value = torch.as_tensor(value, dtype=torch.float32, device=device).detach().reshape(())
        # A new tensor, never `value` itself: a buffer (λ1) changes in place after it is recorded.
        self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._counts[name] += 1

    def reduce_into(self, metrics: dict[str, list[float]], accelerator) -> None:
        """Append each metric's mean since the last call to `metrics[name]`, and start over."""
        if not self._sums:
            return
        names = sorted(self._sums)
        device = next(iter(self._sums.values())).device
        if accelerator.num_processes > 1:
            # One small collective first: processes that recorded different metrics would otherwise hang in the gather
            # below (different sizes) or silently mix up values (same size, other names).
            signature = torch.tensor([len(names), zlib.crc32("\n".join(names).encode())], device=device)
            if not bool((accelerator.gather(signature).reshape(-1, 2) == signature).all()):
                raise RuntimeError(
                    f"processes recorded different step metrics since the last log (this process: {names}); record "
                    "the same metric names on every process, e.g. decided by the config, not by local data"
                )
        means = torch.stack([self._sums[name] / self._counts[name] for name in names])
        gathered = accelerator.gather(means).reshape(-1, len(names)).mean(0).tolist()
        for name, mean in zip(names, gathered):
            metrics[name].append(mean)
        self._sums.clear()
        self._counts.clear()


def cache_features_for_training(args, model: nn.Module, processor, *datasets):
    """`datasets` with cached frozen-encoder features when `args.use_feature_cache` and φ is frozen (else unchanged;
    None stays None). Every process reads the same cache file; the main process writes it first."""
    tippo = unwrap_tippo(model)
    if not (args.use_feature_cache and tippo.config.freeze_encoder):
        return datasets
    with args.main_process_first(desc="caching frozen encoder features"):
        return tuple(
            None if dataset is None else cache_frozen_features(dataset, tippo, processor, args.feature_cache_dir)
            for dataset in datasets
        )


class TIPPoSavingMixin:
    """What a TIPPo trainer saves: the run's `output_dir` always receives a model that `TIPPoModel.from_pretrained`
    loads — a LoRA run saves the merged model there (what the next stage and inference load) and the adapter alone in
    `output_dir/adapter` — plus the processor and a TIPPo model card. Checkpoints keep the Trainer's format.

    A trainer sets `_stage` (for the model card) and may override `_policy` (the model to save inside its wrapper).
    """

    _stage = "training"

    def _policy(self, model: nn.Module) -> nn.Module:
        return model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        output_dir = output_dir or self.args.output_dir
        policy = self._policy(self.accelerator.unwrap_model(self.model))
        if not is_peft_model(policy) or Path(output_dir).resolve() != Path(self.args.output_dir).resolve():
            return super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            policy.save_pretrained(Path(output_dir) / "adapter")
            copy.deepcopy(policy).merge_and_unload().save_pretrained(output_dir)
            self.processor.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Write a TIPPo model card (README.md) to `output_dir`: base models, tags, training config, final metrics."""
        if not self.is_world_process_zero():
            return
        model_name = model_name or Path(self.args.output_dir).name
        tags = [tags] if isinstance(tags, str) else list(tags or ())
        build_model_card(self, self._stage, model_name, dataset_name, tags=tags).save(Path(self.args.output_dir) / "README.md")
