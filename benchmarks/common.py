"""What the training benchmarks share: the machine description, model sizes, step and phase timers, memory probes.

Timings on a shared machine are noisy, so every benchmark runs the thing measured and its yardstick in one process,
alternating, and reports medians and per-round ratios (see `paired_ratios`).
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import ChineseCLIPConfig, T5Config, TrainerCallback  # noqa: E402
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil  # noqa: E402

from tippo_rl import TIPPoModel  # noqa: E402
from tippo_rl.configuration_tippo import TIPPoConfig  # noqa: E402
from tippo_rl.presets import build_tiny_processor, build_tiny_tippo  # noqa: E402
from tippo_rl.processing_tippo import TIPPoProcessor  # noqa: E402


SIZES = ("tiny", "base")
# Dense bf16 peak of the accelerators this project may run on (no sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


# ----------------------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_in_workdir(args, run: Callable[[Any, dict, Path], dict], prefix: str) -> dict:
    """Set the thread count, then `run(args, machine_info(), workdir)` in a temporary folder removed afterwards."""
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return run(args, info, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran: CPU, cores, load, GPU, library versions."""
    import transformers
    import trl

    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        load_average_at_start=list(os.getloadavg()),
        memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        trl=trl.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )
    return info


def peak_bf16_flops() -> float | None:
    """The GPU's dense bf16 peak (FLOP/s), or None on a CPU or an unknown GPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# ----------------------------------------------------------------------------------------------------- model sizes


def t5_base_config(vocab_size: int = 32128, pad_token_id: int = 0, eos_token_id: int = 1) -> T5Config:
    """T5-base dimensions (d_model 768, 12 + 12 layers, 12 heads, d_ff 3072, vocab 32128), as the paper's
    mengzi-t5-base; built from a config, so its weights are random."""
    return T5Config.from_dict(
        dict(
            vocab_size=vocab_size,
            d_model=768,
            d_kv=64,
            d_ff=3072,
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
            relative_attention_num_buckets=32,
            dropout_rate=0.1,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=pad_token_id,
        )
    )


def chinese_clip_vit_b16_config() -> ChineseCLIPConfig:
    """The dimensions of OFA-Sys/chinese-clip-vit-base-patch16: `ChineseCLIPConfig()`'s defaults (224×224 images,
    ViT-B, RoBERTa-base text tower, projection 512) except the patch, 16 there and 32 in the defaults (a bare
    `ChineseCLIPConfig()` is ViT-B/32: 50 image tokens instead of 197), and the text vocabulary, 21128."""
    return ChineseCLIPConfig(text_config=dict(vocab_size=21128), vision_config=dict(patch_size=16), projection_dim=512)


def build_model(size: str, max_target_length: int | None = None, seed: int = 0) -> tuple[TIPPoModel, TIPPoProcessor]:
    """`tiny`: the tiny preset (~0.4M parameters, 32×32 images). `base`: the paper's sizes with random weights —
    Chinese-CLIP ViT-B/16 (`chinese_clip_vit_b16_config`), T5-base (`t5_base_config`), k = 4 as in the ArtMuse
    recipe — and the tiny preset's tokenizers (their ids fit every vocabulary)."""
    if size == "tiny":
        model, processor = build_tiny_tippo(seed=seed)
    elif size == "base":
        processor = build_tiny_processor()
        processor.image_processor = ChineseCLIPImageProcessorPil(
            size={"height": 224, "width": 224}, crop_size={"height": 224, "width": 224}
        )
        tokenizer = processor.tokenizer
        config = TIPPoConfig(
            encoder_config=chinese_clip_vit_b16_config(),
            decoder_config=t5_base_config(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
            prefix_length=4,
            max_images=processor.max_images,
        )
        torch.manual_seed(seed)
        model = TIPPoModel(config)
    else:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if max_target_length is not None:
        processor.max_target_length = max_target_length
    return model, processor


def lengthen(text: str, words: int) -> str:
    """`text` repeated until it has at least `words` words (longer references, for realistic target lengths)."""
    if words <= 0:
        return text
    out = text
    while len(out.split()) < words:
        out = f"{out} {text}"
    return out


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def linear_params(module: torch.nn.Module) -> int:
    """Weights of the matmuls of `module` (what a forward multiplies each token by; embedding lookups excluded)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------------------------------- timers


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


# ----------------------------------------------------------------------------------------------------- memory


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


# ----------------------------------------------------------------------------------------------------- statistics, output


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Round-by-round ratios of two timings measured alternately (each round's pair shares the machine's load)."""
    return [a / b for a, b in zip(numerator, denominator) if a and b]


def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    return format(value, spec)


def print_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Print (and return) a GitHub-flavoured Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells),
    ]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
