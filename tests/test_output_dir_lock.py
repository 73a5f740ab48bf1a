"""The output_dir lock (issue 24, item 10): a second run into a folder another live run writes into stops with one
line naming it; a killed run's lock is taken over with a warning; only the main process of a distributed run holds it;
it goes when the run ends. The other run is a real process: a forked child holding the lock, killed with SIGKILL for
the stale case (no cleanup, as the OOM killer does)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tippo_rl.output_dir_lock import LOCK_NAME, OutputDirInUseError, output_dir_lock


REPO = Path(__file__).resolve().parents[1]


def _hold(output_dir: str, ready) -> None:
    with output_dir_lock(output_dir):
        ready.set()
        signal.pause()  # until the test kills it


@pytest.fixture
def holder(tmp_path):
    """A live process holding `tmp_path/out`'s lock; yields it (SIGKILLed at the end if still alive)."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(target=_hold, args=(str(tmp_path / "out"), ready), daemon=True)
    process.start()
    assert ready.wait(30), "the holder did not take the lock"
    yield process
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    process.join(10)


def recipe(name: str, config: str, tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        str(REPO / "recipes" / f"{name}.py"),
        "--config",
        str(REPO / "recipes/configs" / config),
    ]
    command += ["--output_dir", str(tmp_path / "out"), "--demo_dir", str(tmp_path / "demo"), *arguments]
    return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, config", [("sft", "demo_sft.yaml"), ("evaluate", "demo_evaluate.yaml")])
def test_a_second_run_into_the_same_output_dir_stops_naming_the_first(tmp_path, holder, name, config):
    result = recipe(name, config, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"{name}.py: error: output_dir '{tmp_path / 'out'}' is in use by another run: PID {holder.pid} on host "
        f"{socket.gethostname()} (started "
    ), last
    assert last.endswith("; wait for it to end or choose another --output_dir"), last
    assert "Traceback" not in result.stderr
    # The first run's lock is untouched, and nothing else was written.
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == holder.pid
    assert [path.name for path in (tmp_path / "out").iterdir()] == [LOCK_NAME]
    assert holder.is_alive()


def test_a_killed_runs_lock_is_taken_over_with_a_warning_and_released_at_the_end(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    lock = tmp_path / "out" / LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == holder.pid  # left behind
    result = recipe(
        "sft",
        "demo_sft.yaml",
        tmp_path,
        *("--demo_num_train", "16", "--demo_num_test", "4", "--feature_cache_dir", str(tmp_path / "cache")),
        *("--max_steps", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "taking over the lock" in line]
    assert warnings == [
        f"output_dir '{tmp_path / 'out'}': taking over the lock of a run that no longer runs (PID {holder.pid} on host "
        f"{socket.gethostname()} (started " + warnings[0].split("(started ", 1)[1]
    ]
    assert (tmp_path / "out/model.safetensors").is_file() and not lock.exists()


def test_only_the_main_process_holds_it(tmp_path, holder, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # another process of a distributed run: neither takes nor refuses
    with output_dir_lock(tmp_path / "out") as path:
        assert path is None
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(OutputDirInUseError, match=rf"in use by another run: PID {holder.pid} "):
        with output_dir_lock(tmp_path / "out"):
            pass


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    """A run on another machine (a shared file system) cannot be checked from here: refused, saying how to clear it."""
    (tmp_path / "out").mkdir()
    lock = tmp_path / "out" / LOCK_NAME
    lock.write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "started": "2026-01-01T00:00:00Z", "command": "x"}))
    with pytest.raises(
        OutputDirInUseError, match=rf"PID 4242 on host gpu-node-7 .* \(if it no longer runs, delete {lock}\)$"
    ):
        with output_dir_lock(tmp_path / "out"):
            pass
    assert lock.exists()
    with output_dir_lock(tmp_path / "fresh") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "fresh").exists()  # created for the run, left empty: removed
