"""Launched as the README says: a recipe's one-line error and exit status 2 under `tippo-launch` (single process and
two DDP processes), and no worker left running when the launcher is sent SIGTERM (the last checkpoint complete)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe_loading import free_port

from tippo_rl.launcher import failed_worker_status


REPO = Path(__file__).resolve().parents[1]
DEMO_SFT = REPO / "recipes/configs/demo_sft.yaml"


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}


def launch(launcher: list[str], config: str, *arguments: str, **popen) -> list[str]:
    return [*launcher, "--config_file", str(REPO / "accelerate_configs" / config), "--main_process_port",
            str(free_port()), str(REPO / "recipes/sft.py"), "--config", str(DEMO_SFT), *arguments]  # fmt: skip


TIPPO_LAUNCH = [sys.executable, "-m", "tippo_rl.launcher"]
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


@pytest.mark.parametrize("config", ["cpu.yaml", "ddp_2proc_cpu.yaml"])
def test_a_bad_option_is_one_line_and_exit_status_2_under_tippo_launch(tmp_path, config):
    result = subprocess.run(
        launch(TIPPO_LAUNCH, config, "--learning_rate", "-1", "--output_dir", str(tmp_path)),
        env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors and set(errors) == {"sft.py: error: learning_rate must lie in (0.0, inf], got -1.0"}
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


def test_the_failed_worker_s_status_is_read_from_either_launcher():
    assert failed_worker_status(subprocess.CalledProcessError(2, ["python"])) == 2
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    first = ProcessFailure(local_rank=1, pid=11, exitcode=2, error_file="")
    later = ProcessFailure(local_rank=0, pid=10, exitcode=-15, error_file="")
    first.timestamp, later.timestamp = 1, 2
    assert failed_worker_status(ChildFailedError("sft.py", {1: first, 0: later})) == 2
    assert failed_worker_status(ValueError("not a launcher's")) is None


def workers_of(output_dir: Path) -> list[int]:
    listing = subprocess.run(["pgrep", "-f", f"recipes/sft.py .*{output_dir}"], capture_output=True, text=True)
    return [int(pid) for pid in listing.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [ACCELERATE_LAUNCH, TIPPO_LAUNCH], ids=["accelerate", "tippo-launch"])
def test_sigterm_to_the_launcher_stops_its_worker_and_keeps_the_last_checkpoint(tmp_path, launcher):
    output_dir = tmp_path / "sft"
    command = launch(launcher, "cpu.yaml", "--output_dir", str(output_dir), "--demo_dir", str(tmp_path / "demo"),
                     "--demo_num_train", "64", "--demo_num_test", "4", "--max_steps", "100000", "--save_steps", "20",
                     "--feature_cache_dir", str(tmp_path / "cache"))  # fmt: skip
    process = subprocess.Popen(
        command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list(output_dir.glob("checkpoint-*")) and time.monotonic() < deadline:
            time.sleep(1)
        assert list(output_dir.glob("checkpoint-*")), "no checkpoint within 240 s"
        workers = [pid for pid in workers_of(output_dir) if pid != process.pid]
        assert workers, "the recipe's worker process was not found"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while [pid for pid in workers_of(output_dir) if pid in workers] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in workers_of(output_dir) if pid in workers], "a worker outlived its launcher"
    finally:
        process.kill()
        for pid in workers_of(output_dir):
            os.kill(pid, signal.SIGKILL)
    last = max(output_dir.glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    assert (last / "model.safetensors").is_file() and (last / "trainer_state.json").is_file()
    if launcher is TIPPO_LAUNCH:
        assert process.returncode == 128 + signal.SIGTERM
