"""The GPU check (`benchmarks/gpu_check.sh`, issue 28) cannot rot: its CPU dry run runs every step at tiny sizes and
writes every step's JSON and the summary. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
STEPS = [
    "install",
    "environment",
    "prepare",
    "bench_sft",
    "bench_polishppo",
    "recipes_ddp",
    "recipes_zero2",
    "recipes_zero3",
    "torch_compile",
]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.distributed
def test_dry_run_runs_every_step_on_the_cpu_and_writes_its_json_and_the_summary(tmp_path):
    environment = {**os.environ, "OUT": str(tmp_path / "gpu"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    environment.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu/summary.json").read_text())
    assert list(summary["steps"]) == STEPS
    for name in STEPS:
        step = json.loads((tmp_path / f"gpu/{name}.json").read_text())
        assert step["step"] == name and step["seconds"] >= 0 and step["output_tail"] is not None
        # Skipped: the install (a dry run installs nothing), DeepSpeed where it is not installed; nothing fails.
        assert step["status"] in {"passed", "skipped"}, (name, step["output_tail"])
        assert summary["steps"][name]["status"] == step["status"]
    assert json.loads((tmp_path / "gpu/install.json").read_text())["status"] == "skipped"
    results = {name: json.loads((tmp_path / f"gpu/{name}.json").read_text())["results"] for name in STEPS}
    assert all(results["environment"]["requirements"][name]["ok"] for name in ("torch", "transformers", "trl"))
    assert set(results["bench_sft"]["results"]) == {"tippo/cache", "plain/cache", "tippo/pixels", "plain/pixels"}
    assert set(results["bench_polishppo"]["results"]) == {"polishppo/fixed", "grpo/fixed"}
    assert set(results["recipes_ddp"]) == {"sft", "polishppo"} and results["recipes_ddp"]["sft"]["global_step"] == 2
    assert set(results["torch_compile"]) == {"eager", "compiled"}


def test_a_step_is_recorded_as_passed_failed_timed_out_or_skipped_with_its_reason(tmp_path):
    gpu_check = load_gpu_check()
    (tmp_path / "work").mkdir()
    for rc, status in [(0, "passed"), (1, "failed"), (124, "timeout"), (77, "skipped")]:
        (tmp_path / f"s{rc}.log").write_text("some output\nskipped: deepspeed cannot be imported\n")
        gpu_check.main(
            ["record", str(tmp_path), f"s{rc}", str(rc), str(time.time() - 2), "60", str(tmp_path / "work")]
        )
        step = json.loads((tmp_path / f"s{rc}.json").read_text())
        assert (step["status"], step["exit_code"], step["timeout_s"]) == (status, rc, 60)
        assert step["seconds"] >= 2 and step["output_tail"][-1] == "skipped: deepspeed cannot be imported"
        assert step["reason"] == ("skipped: deepspeed cannot be imported" if status == "skipped" else None)
    gpu_check.main(["summary", str(tmp_path), "s0", "s1", "missing"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] == 1 and summary["steps"]["missing"]["status"] == "not run"
