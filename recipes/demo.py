"""`make demo`: the embedded default's whole job, SFT → PolishPPO → evaluation, in one process.

    python recipes/demo.py    # recipes/configs/demo_sft.yaml, demo_polishppo.yaml, demo_evaluate.yaml

Each stage is its recipe's own `main` (recipes/sft.py, recipes/polishppo.py, recipes/evaluate.py) with its config,
as `make demo-sft demo-polishppo demo-eval` runs them one process each, with the same results. What one process
saves is the start-up: the libraries are imported once instead of three times (~6 s of CPU each), and no
`accelerate launch` process starts first (the configs say `use_cpu: true`, one process).

While SFT trains on one CPU core, a second process on the other one builds what the PolishPPO stage will read from
the cache: its semantic reward's static embedder (all-MiniLM-L6-v2 distilled into a Model2Vec table, ~25 s, once per
machine: `tippo_rl.rewards.static_embedder`). The PolishPPO stage then loads it; had the second process not built it
(it failed, or another embedder is configured), the stage builds it itself, as the recipe alone does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


RECIPES = Path(__file__).resolve().parent
CONFIGS = RECIPES / "configs"


def load_recipe(name: str):
    """`recipes/<name>.py` as a module (recipes/ is not a package), for its `main`."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sft_parser():
    from tippo_rl.model_config import TIPPoModelConfig
    from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
    from tippo_rl.trainer import TIPPoSFTConfig

    return TIPPoParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))


def polishppo_parser():
    from tippo_rl.model_config import TIPPoModelConfig
    from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
    from tippo_rl.trainer.polishppo_config import PolishPPOConfig

    return TIPPoParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig))


def build_semantic_reward(polishppo_config: str) -> None:
    """The semantic reward of the PolishPPO stage that `polishppo_config` describes, built as the stage's trainer builds it
    (so that a static embedder it distils lands in the cache under the key the stage looks up). Only for the demo
    dataset, whose language the config says before the data exists."""
    from tippo_rl.rewards import load_reward
    from tippo_rl.trainer.polishppo_trainer import SEMANTIC, semantic_reward_kwargs

    script_args, training_args, _ = polishppo_parser().parse_args_and_config(["--config", polishppo_config])
    if script_args.dataset == "demo" and SEMANTIC in training_args.reward_funcs:
        load_reward(SEMANTIC, **semantic_reward_kwargs(training_args, script_args.demo_lang))


def start_semantic_reward(polishppo_config: str) -> tuple[subprocess.Popen, Path] | None:
    """`build_semantic_reward` in a second process, its output in a log file; None where there is nothing to build
    beforehand (no static embedder: the stage's embedder has no cache)."""
    import yaml

    config = yaml.safe_load(Path(polishppo_config).read_text(encoding="utf-8")) or {}
    if config.get("semantic_backend") != "static" or config.get("dataset") != "demo":
        return None
    log = Path(tempfile.mkstemp(prefix="tippo-demo-semantic-reward-", suffix=".log")[1])
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, __file__, "--build_semantic_reward", polishppo_config],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
    return process, log


def finish_semantic_reward(started: tuple[subprocess.Popen, Path] | None) -> None:
    """Wait for the second process; if it failed, say so (the PolishPPO stage then builds its reward itself)."""
    if started is None:
        return
    process, log = started
    if process.wait() != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        print(
            f"demo: building the semantic reward beforehand failed (exit status {process.returncode}: "
            f"{' '.join(tail)}; the whole log: {log}); the PolishPPO stage builds it itself",
            file=sys.stderr,
        )
        return
    log.unlink(missing_ok=True)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def timed(stage: str, times: list[str]):
    """Append `stage`'s wall-clock and CPU seconds (this process) to `times`."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield
    finally:
        times.append(f"{stage} {time.perf_counter() - wall:.1f} s (CPU {cpu_seconds() - cpu:.1f} s)")


def run_training_stage(recipe: str, parser, config: str) -> None:
    """recipes/<recipe>.py's `main` with `config`, as its `__main__` runs it."""
    from tippo_rl.output_dir_lock import output_dir_lock

    with parser.reporting_input_errors():
        script_args, training_args, model_args = parser.parse_args_and_config(["--config", config])
        with output_dir_lock(training_args.output_dir):
            load_recipe(recipe).main(script_args, training_args, model_args)


def start_meteor(evaluate_config: str):
    """A `MeteorScorer` for the evaluation stage, started now: its JVM spends ~10 s of CPU loading METEOR's paraphrase
    table, on the core that PolishPPO leaves free, instead of being waited for after PolishPPO. None where the
    evaluation has no METEOR, or Java is missing or fails (the evaluation stage then says so itself)."""
    import shutil

    import yaml

    from tippo_rl.evaluation import ExternalToolError, MeteorScorer
    from tippo_rl.evaluation.metrics import DEFAULT_METRICS, normalize_metric_names

    config = yaml.safe_load(Path(evaluate_config).read_text(encoding="utf-8")) or {}
    if "meteor" not in normalize_metric_names(config.get("metrics", DEFAULT_METRICS)) or not shutil.which("java"):
        return None
    try:
        return MeteorScorer(low_priority=True)  # its load takes every core for a while: only what PolishPPO leaves
    except ExternalToolError:
        return None


def run_evaluation(config: str, meteor_scorer=None) -> None:
    """recipes/evaluate.py's `main` with `config`, as its `__main__` runs it (with `meteor_scorer`, started before)."""
    from tippo_rl.evaluation import EvaluateArguments, EvaluationArguments
    from tippo_rl.output_dir_lock import output_dir_lock
    from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments

    parser = TIPPoParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments))
    with parser.reporting_input_errors():
        script_args, evaluate_args, eval_args = parser.parse_args_and_config(["--config", config])
        try:
            with output_dir_lock(evaluate_args.output_dir):
                load_recipe("evaluate").main(script_args, evaluate_args, eval_args, meteor_scorer=meteor_scorer)
        except ValueError as error:  # a missing model or split, a bad option value: one line, exit status 2
            parser.exit(2, f"{parser.prog}: error: {error}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft_config", default=str(CONFIGS / "demo_sft.yaml"))
    parser.add_argument("--polishppo_config", default=str(CONFIGS / "demo_polishppo.yaml"))
    parser.add_argument("--evaluate_config", default=str(CONFIGS / "demo_evaluate.yaml"))
    parser.add_argument("--build_semantic_reward", metavar="POLISHPPO_CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_semantic_reward:  # the second process (one thread, beside SFT's one)
        build_semantic_reward(args.build_semantic_reward)
        return

    start, times = time.perf_counter(), []
    semantic_reward = start_semantic_reward(args.polishppo_config)  # first: it runs while this process imports
    meteor = None
    try:
        with timed("SFT", times):
            # Importing the parser's modules imports torch, transformers, TRL and datasets: objects that live as long
            # as the process.
            parser = sft_parser()
            gc.freeze()  # so the garbage collector no longer walks them (~0.5 s of the SFT stage's collections)
            run_training_stage("sft", parser, args.sft_config)
        with timed("waiting for the semantic reward", times):
            finish_semantic_reward(semantic_reward)
            semantic_reward = None
        with timed("PolishPPO", times):
            meteor = start_meteor(args.evaluate_config)
            run_training_stage("polishppo", polishppo_parser(), args.polishppo_config)
        with timed("evaluation", times):
            run_evaluation(args.evaluate_config, meteor)
    finally:
        if semantic_reward is not None:  # SFT stopped early: so does the second process
            semantic_reward[0].terminate()
            semantic_reward[0].wait()
        if meteor is not None:
            meteor.close()
    others = cpu_seconds(resource.RUSAGE_CHILDREN)  # the semantic reward's process, Java (PTB tokenizer, METEOR)
    total = f"{time.perf_counter() - start:.1f} s (CPU {cpu_seconds():.1f} s, other processes {others:.1f} s)"
    print(f"\ndemo: {total}; {', '.join(times)}")


if __name__ == "__main__":
    main()
