"""Two machines, simulated on localhost: two `accelerate launch` processes with `num_machines 2`, one process each,
the CPU forced. Separate filesystems (each machine its own HOME, cache and data folder) and one shared HOME (an NFS home)
both finish SFT and PolishPPO, each machine building what it needs once, and give the same final weights as each other
and as one machine running two processes. A run killed after a checkpoint resumes on two machines to the weights of an
uninterrupted run, every process finding its RNG state in the shared output_dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe_loading import free_port
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[1]
SFT = ["recipes/sft.py", "--config", "recipes/configs/demo_sft.yaml", "--max_steps", "4"]
POLISHPPO = [
    "recipes/polishppo.py", "--config", "recipes/configs/demo_polishppo.yaml", "--total_iterations", "2",
    "--per_device_train_batch_size", "4", "--steps_per_generation", "1", "--num_ppo_epochs", "1",
    "--max_new_tokens", "8", "--eval_strategy", "no",
]  # fmt: skip


def start(recipe: list[str], homes: list[Path], folders: list[Path], output_dir: Path, *extra: str) -> list:
    """One `accelerate launch` per machine (`homes[rank]`, its data and feature folders under `folders[rank]`); a single
    home is one machine running both processes."""
    port = str(free_port())
    processes = []
    for rank, (home, folder) in enumerate(zip(homes, folders)):
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
        environment.update(HOME=str(home), TIPPO_RL_CACHE=str(home / ".cache" / "tippo_rl"))
        machines = ["--num_machines", "2", "--machine_rank", str(rank)] if len(homes) == 2 else []
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "accelerate_configs/ddp_2proc_cpu.yaml"), *machines, "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", port, str(REPO / recipe[0]),
            *[str(REPO / part) if part.startswith("recipes/") else part for part in recipe[1:]],
            "--output_dir", str(output_dir), "--demo_dir", str(folder / "demo"),
            "--feature_cache_dir", str(folder / "features"), "--demo_num_train", "32", "--demo_num_test", "4",
            "--save_strategy", "no", *extra,
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(
                command,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    return processes


def finish(processes: list) -> None:
    for rank, process in enumerate(processes):
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"machine {rank}:\n{output[-4000:]}"


def launch(recipe, homes, folders, output_dir, *extra) -> dict:
    """Run to the end; the final weights."""
    finish(start(recipe, homes, folders, output_dir, *extra))
    return load_file(output_dir / "model.safetensors")


def assert_same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    assert all(bool((first[name] == second[name]).all()) for name in first)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_machines_on_separate_and_on_shared_filesystems(tmp_path):
    # Separate filesystems: each machine its own HOME (so its own tiny φ cache), data and output folders.
    homes = [tmp_path / "machine0", tmp_path / "machine1"]
    shared = [homes[0], homes[0]]  # a shared HOME (an NFS home): one cache and data folder for both machines
    separate = launch(SFT, homes, homes, tmp_path / "separate_sft")
    # Each machine built its tiny φ itself, weights included (transformers writes weights only on global rank 0).
    for home in homes:
        assert list((home / ".cache/tippo_rl/tiny_encoders").glob("*/model.safetensors"))
    # Both layouts, and one machine with two processes, trained the same weights (written by the global main process).
    assert_same(separate, launch(SFT, shared, shared, tmp_path / "shared_sft"))
    assert_same(separate, launch(SFT, homes[:1], homes[:1], tmp_path / "single_sft"))
    # PolishPPO from that SFT model, the same three ways: its static semantic embedder is distilled once per HOME.
    policy = ["--model_name_or_path", str(tmp_path / "separate_sft")]
    separate = launch(POLISHPPO, homes, homes, tmp_path / "separate_ppo", *policy)
    assert_same(separate, launch(POLISHPPO, shared, shared, tmp_path / "shared_ppo", *policy))
    assert_same(separate, launch(POLISHPPO, homes[:1], homes[:1], tmp_path / "single_ppo", *policy))
    # Killed after its first checkpoint (both machines, each process group), then resumed: separate HOMEs and one
    # shared output_dir, where each process writes its own RNG state (rng_state_<global rank>.pth).
    output_dir = tmp_path / "resumed_sft"
    every_two_steps = ["--save_strategy", "steps", "--save_steps", "2"]
    processes = start(SFT, homes, homes, output_dir, *every_two_steps)
    checkpoint = output_dir / "checkpoint-2"
    while not checkpoint.is_dir() and all(process.poll() is None for process in processes):
        time.sleep(0.2)
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {path.name for path in checkpoint.iterdir()}
    written = checkpoint.stat().st_ino  # a run started afresh would publish a new checkpoint-2 folder
    # Should the kill come too late, the rest of the run is removed, so that the resume always starts at step 2.
    (output_dir / "model.safetensors").unlink(missing_ok=True)
    if (output_dir / "checkpoint-4").exists():
        os.rename(output_dir / "checkpoint-4", tmp_path / "too_late")
    resumed = launch(SFT, homes, homes, output_dir, *every_two_steps, "--resume_from_checkpoint", str(checkpoint))
    assert checkpoint.stat().st_ino == written and (output_dir / "checkpoint-4").is_dir()
    assert_same(load_file(tmp_path / "separate_sft/model.safetensors"), resumed)
