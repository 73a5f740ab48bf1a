"""Step, iteration and phase timers for the training benchmarks: wall time and CPU time, the GPU synchronised first.

Timings on a shared machine are noisy, so every benchmark runs the thing measured and its yardstick in one process,
alternating, and reports medians and per-round ratios (`tables.paired_ratios`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimes(TrainerCallback):
    """Wall and CPU time of every optimizer step of a `train()` call: the time between consecutive `on_step_end`s
    (data, forward, backward, clipping, optimizer, callbacks), the first measured from `on_train_begin`.

    CPU time (`time.process_time`, all threads of the process) counts the work done and not the time spent waiting
    for a core, so on a shared machine it is far steadier than wall time; with one torch thread it equals the wall
    time of an idle machine."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._last = self._last_cpu = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.times, self.cpu_times = [], []
        synchronize()
        self._last, self._last_cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        now, now_cpu = time.perf_counter(), time.process_time()
        self.times.append(now - self._last)
        self.cpu_times.append(now_cpu - self._last_cpu)
        self._last, self._last_cpu = now, now_cpu


class PhaseTimer:
    """Wraps methods of an object (on the instance: the class and other instances are untouched) and adds the wall
    and CPU time of each call to a named phase. `phase` may be a function of the call's arguments (one method, two
    phases); `nested_in` counts only the calls made while that phase runs."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.cpu_totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._active: dict[str, int] = defaultdict(int)

    def wrap(self, obj: Any, method: str, phase: str | Callable[..., str], nested_in: str | None = None) -> None:
        original = getattr(obj, method)
        timer = self

        def timed(*args, **kwargs):
            if nested_in is not None and not timer._active[nested_in]:
                return original(*args, **kwargs)
            name = phase(*args, **kwargs) if callable(phase) else phase
            synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            timer._active[name] += 1
            try:
                return original(*args, **kwargs)
            finally:
                timer._active[name] -= 1
                synchronize()
                timer.totals[name] += time.perf_counter() - start
                timer.cpu_totals[name] += time.process_time() - start_cpu
                timer.calls[name] += 1

        timed.__name__ = getattr(original, "__name__", method)
        timed.__wrapped__ = original
        setattr(obj, method, timed)

    def wrap_callable(self, fn: Callable, phase: str) -> Callable:
        """A timed function calling `fn`, with `fn`'s name (trainers log reward functions by name)."""
        holder = type("Holder", (), {})()
        holder.fn = fn
        self.wrap(holder, "fn", phase)
        wrapped = holder.fn
        wrapped.__name__ = getattr(fn, "__name__", type(fn).__name__)
        return wrapped

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        return dict(self.totals), dict(self.cpu_totals)


class IterationTimes(TrainerCallback):
    """Wall and CPU time of every RL iteration (`steps_per_iteration` optimizer steps) of a `train()` call, with the
    time each `PhaseTimer` phase took inside it."""

    def __init__(self, steps_per_iteration: int, phases: PhaseTimer):
        self.steps_per_iteration = steps_per_iteration
        self.phases = phases
        self.iterations: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.iterations, self._steps = [], 0
        synchronize()
        self._last = (time.perf_counter(), time.process_time(), *self.phases.snapshot())

    def on_step_end(self, args, state, control, **kwargs):
        self._steps += 1
        if self._steps % self.steps_per_iteration:
            return
        synchronize()
        now = (time.perf_counter(), time.process_time(), *self.phases.snapshot())
        wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
        phases = {k: v - self._last[2].get(k, 0.0) for k, v in now[2].items()}
        cpu_phases = {k: v - self._last[3].get(k, 0.0) for k, v in now[3].items()}
        self.iterations.append(dict(wall_s=wall, cpu_s=cpu, phases_s=phases, phases_cpu_s=cpu_phases))
        self._last = now
