"""Recipes in tests: loading a recipe script as a module (recipes/ is not a package), and launching it with accelerate."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def load_recipe(name: str):
    """`recipes/<name>.py` as a module."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_recipe(name: str, accelerate_config: str, *arguments: str, cwd: Path, timeout: int = 600) -> str:
    """`accelerate launch --config_file accelerate_configs/<config> recipes/<name>.py <arguments>` on the CPU, offline and
    one thread per process; fails the test with the output's tail unless it succeeds, else returns stdout + stderr."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    environment.pop("ACCELERATE_USE_CPU", None)
    if "deepspeed" not in accelerate_config:
        # Forces the CPU for the multi-GPU launcher; with DeepSpeed it would quietly drop DeepSpeed (its config's use_cpu
        # keeps it on the CPU).
        environment["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / accelerate_config),
        "--main_process_port",
        str(free_port()),
        str(REPO / "recipes" / f"{name}.py"),
        *arguments,
    ]
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr
