"""Per-step training metrics kept on the device between logs."""

from __future__ import annotations

import zlib
from collections import defaultdict

import torch


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
