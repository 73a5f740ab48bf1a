"""Where a benchmark runs: the CPU, the machine description every result carries, the GPU's peak FLOP/s (for MFU), and
the thread count and temporary work folder of a run."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


# Dense bf16 peak of the accelerators this project may run on (no sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


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
