"""Two machines, simulated on localhost: two `accelerate launch` processes with `num_machines 2`, one process each,
the CPU forced. Separate filesystems (each machine its own HOME, cache and data folder) and one shared HOME (an NFS home)
both finish SFT, each machine building what it needs once, and give the same final weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_loading import free_port
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[1]


def launch_two_machines(homes: list[Path], folders: list[Path], output_dir: Path) -> list[subprocess.CompletedProcess]:
    port = str(free_port())
    processes = []
    for rank, (home, folder) in enumerate(zip(homes, folders)):
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
        environment.update(HOME=str(home), TIPPO_RL_CACHE=str(home / ".cache" / "tippo_rl"))
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "accelerate_configs/ddp_2proc_cpu.yaml"), "--num_machines", "2",
            "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, str(REPO / "recipes/sft.py"),
            "--config", str(REPO / "recipes/configs/demo_sft.yaml"), "--output_dir", str(output_dir),
            "--demo_dir", str(folder / "demo"), "--feature_cache_dir", str(folder / "features"),
            "--demo_num_train", "32", "--demo_num_test", "4", "--max_steps", "4", "--save_strategy", "no",
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=900)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


@pytest.mark.slow
@pytest.mark.distributed
def test_two_machines_on_separate_and_on_shared_filesystems(tmp_path):
    # Separate filesystems: each machine its own HOME (so its own tiny φ cache), data and output folders.
    homes = [tmp_path / "machine0", tmp_path / "machine1"]
    separate = launch_two_machines(homes, homes, tmp_path / "separate_out")
    for rank, result in enumerate(separate):
        assert result.returncode == 0, f"machine {rank}:\n{result.stdout[-4000:]}"
    # Each machine built its tiny φ itself, weights included (transformers writes weights only on global rank 0).
    for home in homes:
        assert list((home / ".cache/tippo_rl/tiny_encoders").glob("*/model.safetensors"))
    # Shared HOME (an NFS home): one cache and data folder for both machines (already built: they read it together).
    shared = launch_two_machines([homes[0], homes[0]], [homes[0], homes[0]], tmp_path / "shared_out")
    for rank, result in enumerate(shared):
        assert result.returncode == 0, f"machine {rank}:\n{result.stdout[-4000:]}"
    # The model is written by the global main process only, and both layouts trained the same weights.
    first, second = (
        load_file(tmp_path / "separate_out/model.safetensors"),
        load_file(tmp_path / "shared_out/model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(bool((first[name] == second[name]).all()) for name in first)
