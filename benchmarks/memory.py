"""Memory probes for the benchmarks: the peak of a block (GPU or the process's resident set), the bytes of tensors and
of an optimizer's state, and parameter counts."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterable
from pathlib import Path

import torch
from timing import synchronize


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS, so the next RSS peak measures new allocations."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block above what was allocated when it started, in bytes.

    GPU: `torch.cuda.max_memory_allocated`. CPU: the process's peak resident set (VmHWM), reset at the start by
    writing 5 to /proc/self/clear_refs (Linux ≥ 4.0); where that is impossible, RSS is sampled every 2 ms."""

    def __enter__(self):
        release_memory()
        self.gpu = torch.cuda.is_available()
        if self.gpu:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = _status_kib("VmRSS") * 1024
        self._sampler = None
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            import threading

            import psutil

            process, self._peak, self._stop = psutil.Process(), self.start, threading.Event()

            def sample():
                while not self._stop.wait(0.002):
                    self._peak = max(self._peak, process.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        synchronize()
        if self.gpu:
            self.peak = torch.cuda.max_memory_allocated()
        elif self._sampler is None:
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = self._peak
        self.delta = max(self.peak - self.start, 0)
        return False


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of `tensors`, each storage counted once (shared modules, tied weights)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(optimizer) -> int:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def linear_params(module: torch.nn.Module) -> int:
    """Weights of the matmuls of `module` (what a forward multiplies each token by; embedding lookups excluded)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
