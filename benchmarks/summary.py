"""`make bench`: every speed benchmark in quick mode, one after another, and the ratios that matter in one file,
`benchmarks/results/summary.json`. Each ratio is measured inside its own benchmark, the thing and its yardstick
alternating in one process (CPU time of one torch thread); the demo's time is absolute, with the machine's load beside
it.

    python benchmarks/summary.py              # about 8 minutes on 2 cores
    python benchmarks/summary.py --skip_demo  # the ratios only
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run(script: str, *arguments: str, output: Path) -> dict:
    """Run `benchmarks/<script>` with `--output output`; its JSON, or {"error": …} when it failed."""
    command = [sys.executable, str(HERE / script), *arguments, "--output", str(output)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=HERE.parent, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": f"{script} exited {result.returncode}: {result.stderr.strip().splitlines()[-1:]}"}
    return json.loads(output.read_text())


def demo_seconds_after_setup() -> dict:
    """`make demo` with the environment already set up (never installing: the venv's stamp is taken as up to date), in a
    fresh HOME and a fresh outputs folder (a temporary folder with links to the Makefile, recipes and configs), so that
    every cache and the dataset are built as on a new machine; the wall-clock and CPU seconds (of every process it
    ran), the machine's load average before and after, and the demo's own line of stage times."""
    venv = Path(sys.executable).parent.parent
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as folder:
        for name in ("Makefile", "recipes", "accelerate_configs", "setup.cfg", "constraints.txt"):
            (Path(folder) / name).symlink_to(HERE.parent / name)
        environment = {**os.environ, "HOME": home, "PYTHONPATH": str(HERE.parent)}
        load = os.getloadavg()[0]
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            ["make", "-o", str(venv / ".installed"), "demo", "VENV=" + str(venv)],
            cwd=folder, env=environment, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
    stages = [line for line in result.stdout.splitlines() if line.startswith("demo: ")]
    return {"seconds": round(seconds, 1), "exit_status": result.returncode,
            "cpu_seconds": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
            "load_before": load, "load_after": os.getloadavg()[0], "stages": stages[-1] if stages else None}  # fmt: skip


def main() -> dict:
    RESULTS.mkdir(exist_ok=True)
    quick = RESULTS / "quick"
    quick.mkdir(exist_ok=True)
    sft = run("bench_sft.py", "--size", "tiny", "--steps", "4", "--rounds", "6",
              "--variants", "tippo/cache", "trl/cache", "tippo/pixels", "trl/pixels", output=quick / "sft_tiny.json")  # fmt: skip
    groups = run("bench_prompt_groups.py", "--size", "tiny", "--rounds", "2", output=quick / "prompt_groups.json")
    ppo = {
        k: run("bench_polishppo.py", "--decoder", "llama", "--num_generations", str(k), "--rounds", "6",
               "--variants", "polishppo/fixed", "grpo/fixed", output=quick / f"polishppo_llama_k{k}.json")
        for k in (1, 4)
    }  # fmt: skip
    ratios = sft.get("ratios", {})
    summary = {
        "machine": machine_info(),
        "sft_over_trl_cached": (ratios.get("tippo_over_trl_cache") or {}).get("cpu_median"),
        "sft_over_trl_pixels": (ratios.get("tippo_over_trl_pixels") or {}).get("cpu_median"),
        "ppo_time_over_grpo_k1": ppo[1].get("ratios", {}).get("polishppo_over_grpo_cpu"),
        "ppo_time_over_grpo_k4": ppo[4].get("ratios", {}).get("polishppo_over_grpo_cpu"),
        "k4_over_k1": groups.get("medians", {}).get("k4_over_k1"),
        "demo_seconds_after_setup": None if "--skip_demo" in sys.argv else demo_seconds_after_setup(),
        "errors": {name: part["error"] for name, part in
                   {"sft": sft, "prompt_groups": groups, "ppo_k1": ppo[1], "ppo_k4": ppo[4]}.items() if "error" in part},
        "notes": "sft_over_trl: TIPPo's SFT trainer over TRL's SFTTrainer on the same TIPPo model, tiny size (quick); "
        "PPO against TRL's GRPO on the same Llama decoder, fixed-length completions; ratios are per-round medians of CPU "
        "time, one torch thread",
    }  # fmt: skip
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({key: value for key, value in summary.items() if key != "machine"}, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
