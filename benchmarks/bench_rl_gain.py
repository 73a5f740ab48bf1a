"""Does the RL stage beat its SFT model? Held-out greedy Δ (literal, ROUGE-L, CIDEr) of RL variants over seeds.

SFT runs once (the SFT recipe's own `main` on `recipes/configs/demo_sft.yaml`); then every variant runs from that SFT
model for each seed: the demo PolishPPO config (`recipes/configs/demo_polishppo.yaml`) with the variant's overrides.
Each run is decoded greedily on the held-out split (`--demo_num_test` samples, ≥ 200 for a study) and scored as
`recipes/evaluate.py` scores the demo (pycocoevalcap ROUGE-L and CIDEr-D, PTB tokenisation), plus the literal reward of
Eq. 7; Δ is against the SFT model on the same samples. Per variant: every seed's Δ, the mean, the min, how many seeds
improved, and the median seconds per PPO iteration. Writes JSON and a plot into `benchmarks/results/`.

A variant is `NAME: key=value key=value ...`: config fields of the demo PolishPPO YAML (values read as YAML:
`advantage_window=null`, `reward_funcs=[literal,semantic]`, `generation_kwargs={repetition_penalty:1.2}`), plus
`trainer=ppo` to run the plain `PPOTrainer` instead of `PolishPPOTrainer` (the PolishPPO-only fields are then dropped).
A variant that sets `reward_funcs` without `reward_weights` gets one weight per reward, not the YAML's weights.

    python benchmarks/bench_rl_gain.py --seeds 0 1 2 --demo_num_test 300
    python benchmarks/bench_rl_gain.py --variants "demo:" "rloo4: num_generations=4 advantage_baseline=leave_one_out"
    python benchmarks/bench_rl_gain.py --quick      # a smoke test: tiny runs, a few seconds each
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402
from machine import run_in_workdir  # noqa: E402
from tables import fmt, print_table, write_json  # noqa: E402
from trl import TrlParser  # noqa: E402

from tippo_rl.data import load_datasets  # noqa: E402
from tippo_rl.evaluation import EvaluationArguments, score_model  # noqa: E402
from tippo_rl.model_config import TIPPoModelConfig  # noqa: E402
from tippo_rl.presets import load_model_and_processor  # noqa: E402
from tippo_rl.rewards import literal_reward  # noqa: E402
from tippo_rl.script_arguments import TIPPoScriptArguments  # noqa: E402
from tippo_rl.trainer.polishppo_config import PolishPPOConfig  # noqa: E402
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer  # noqa: E402
from tippo_rl.trainer.ppo_config import PPOConfig  # noqa: E402
from tippo_rl.trainer.ppo_trainer import PPOTrainer  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SFT_CONFIG = REPO / "recipes/configs/demo_sft.yaml"
RL_CONFIG = REPO / "recipes/configs/demo_polishppo.yaml"
METRICS = ("literal", "ROUGE-L", "CIDEr")
DEFAULT_VARIANTS = [
    "demo:",
    "paper_literal: advantage_baseline=running advantage_window=null gamma_schedule=paper",
    "group4: num_generations=4 advantage_baseline=group",
    "leave_one_out4: num_generations=4 advantage_baseline=leave_one_out",
    "greedy: advantage_baseline=greedy",
]
# --quick: the smallest settings that still run every step (a smoke test, not a measurement).
QUICK_SFT = dict(max_steps=4, per_device_train_batch_size=8, logging_steps=2, save_strategy="no")
QUICK_RL = dict(
    total_iterations=2, per_device_train_batch_size=4, max_new_tokens=8, logging_steps=1, save_strategy="no"
)


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME: key=value ...` → (name, {key: YAML value})."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"variant {text!r}: write NAME: key=value key=value ...")
    overrides = {}
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"variant {name.strip()!r}: {item!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    return name.strip(), overrides


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse_with_config(config: dict, classes: tuple, workdir: Path, stem: str):
    """Parse a config dict as the recipes parse their YAML (through a YAML file: nulls and lists as in the configs)."""
    path = workdir / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return TrlParser(classes).parse_args_and_config(args=["--config", str(path)])


def common_settings(args, workdir: Path) -> dict:
    return dict(
        demo_dir=str(workdir / "demo_data"),
        demo_num_test=args.demo_num_test,
        feature_cache_dir=str(workdir / "cache"),
        disable_tqdm=True,
        report_to="none",
        **({"demo_num_train": args.demo_num_train} if args.demo_num_train else {}),
    )


def train_sft(args, workdir: Path, overrides: dict | None = None) -> Path:
    """The one SFT run: `demo_sft.yaml` with the run's settings, then `overrides` (`--sft_overrides`)."""
    config = yaml.safe_load(SFT_CONFIG.read_text())
    config.update(common_settings(args, workdir), output_dir=str(workdir / "sft"), save_strategy="no")
    if args.quick:
        config.update(QUICK_SFT)
    config.update(overrides or {})
    script_args, training_args, model_args = parse_with_config(
        config, (TIPPoScriptArguments, load_recipe("sft").TIPPoSFTConfig, TIPPoModelConfig), workdir, "sft"
    )
    load_recipe("sft").main(script_args, training_args, model_args)
    return Path(training_args.output_dir)


def evaluate(model, processor, dataset, eval_args: EvaluationArguments) -> dict[str, float]:
    predictions, result, _ = score_model(model, processor, dataset, eval_args)
    literal = literal_reward([predictions[i] for i in dataset["id"]], dataset["reference"])
    return {
        "literal": 100 * sum(literal) / len(literal),
        "ROUGE-L": 100 * result.corpus["ROUGE-L"],
        "CIDEr": 100 * result.corpus["CIDEr"],
    }


def run_variant(
    args, workdir: Path, sft_dir: Path, name: str, overrides: dict, seed: int, eval_args, keep: dict | None = None
) -> dict:
    """One RL run from the SFT model, scored on the held-out split; `keep` (a dict) receives the run's log history."""
    overrides = dict(overrides)
    trainer_kind = overrides.pop("trainer", "polishppo")
    config_class, trainer_class = {"polishppo": (PolishPPOConfig, PolishPPOTrainer), "ppo": (PPOConfig, PPOTrainer)}[
        trainer_kind
    ]
    config = yaml.safe_load(RL_CONFIG.read_text())
    config.update(
        common_settings(args, workdir),
        model_name_or_path=str(sft_dir),
        output_dir=str(workdir / f"rl_{name}_{seed}"),
        seed=seed,
        save_strategy="no",
    )
    if args.quick:
        config.update(QUICK_RL)
    if "reward_funcs" in overrides and "reward_weights" not in overrides:
        config.pop("reward_weights", None)  # the YAML's weights belong to the YAML's rewards
    config.update(overrides)
    if trainer_kind == "ppo":
        known = (
            {f.name for f in dataclasses.fields(PPOConfig)}
            | {f.name for f in dataclasses.fields(TIPPoScriptArguments)}
            | {f.name for f in dataclasses.fields(TIPPoModelConfig)}
        )
        config = {key: value for key, value in config.items() if key in known or key in overrides}
    script_args, training_args, model_args = parse_with_config(
        config, (TIPPoScriptArguments, config_class, TIPPoModelConfig), workdir, f"{name}_{seed}"
    )
    model, processor = load_model_and_processor(model_args, lang=script_args.demo_lang)
    train, test = load_datasets(script_args, max_images=model.config.max_images)
    trainer = trainer_class(model=model, args=training_args, processor=processor, train_dataset=train)
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    iterations = trainer.iteration
    scores = evaluate(trainer._policy(trainer.accelerator.unwrap_model(trainer.model)), processor, test, eval_args)
    history = trainer.state.log_history
    if keep is not None:
        keep["log_history"] = history
    lengths = [entry["completions/mean_length"] for entry in history if "completions/mean_length" in entry]
    clipped = [entry["completions/clipped_ratio"] for entry in history if "completions/clipped_ratio" in entry]
    return dict(
        seed=seed,
        scores=scores,
        train_seconds=seconds,
        iterations=iterations,
        seconds_per_iteration=seconds / max(iterations, 1),
        cpu_seconds_per_iteration=cpu_seconds / max(iterations, 1),
        completions_per_iteration=training_args.generation_batch_size,
        num_generations=training_args.num_generations,
        last_mean_length=lengths[-1] if lengths else None,
        last_clipped_ratio=clipped[-1] if clipped else None,
    )


def summarise(runs: list[dict], sft: dict[str, float]) -> dict:
    deltas = {metric: [run["scores"][metric] - sft[metric] for run in runs] for metric in METRICS}
    out = {"runs": runs, "delta": deltas}
    for metric, values in deltas.items():
        out[f"{metric}_delta_mean"] = statistics.fmean(values)
        out[f"{metric}_delta_min"] = min(values)
        out[f"{metric}_improved"] = sum(v > 0 for v in values)
    out["seconds_per_iteration_median"] = statistics.median(run["seconds_per_iteration"] for run in runs)
    # CPU time counts the work, not the waits for a core: steadier than wall time on a shared machine (timing.StepTimes).
    out["cpu_seconds_per_iteration_median"] = statistics.median(run["cpu_seconds_per_iteration"] for run in runs)
    return out


def plot(path: Path, results: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 0.5 * len(names) + 2), sharey=True)
    for axis, metric in zip(axes, METRICS):
        for row, name in enumerate(names):
            values = results[name]["delta"][metric]
            axis.scatter(values, [row] * len(values), color="tab:blue", alpha=0.7)
            axis.scatter([statistics.fmean(values)], [row], color="black", marker="|", s=300)
        axis.axvline(0, color="grey", linewidth=0.8)
        axis.set_title(f"Δ {metric} vs SFT (×100)")
        axis.set_yticks(range(len(names)), names)
    figure.suptitle(f"RL stage vs its SFT model, held-out greedy; dots: seeds {seeds}, bar: mean")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def run(args, info: dict, workdir: Path) -> dict:
    variants = [parse_variant(text) for text in args.variants]
    eval_args = EvaluationArguments(
        metrics=["rouge_l", "cider"],
        tokenize=args.tokenize,
        lang="en",
        batch_size=64,
        max_new_tokens=args.eval_max_new_tokens,
        device="cpu",
    )
    start = time.perf_counter()
    sft_dir = train_sft(args, workdir, args.sft_overrides)
    sft_seconds = time.perf_counter() - start
    from tippo_rl import TIPPoForConditionalGeneration, TIPPoProcessor

    script_args = TIPPoScriptArguments(
        dataset="demo", **{k: v for k, v in common_settings(args, workdir).items() if k.startswith("demo_")}
    )
    _, test = load_datasets(script_args)
    sft_scores = evaluate(
        TIPPoForConditionalGeneration.from_pretrained(sft_dir),
        TIPPoProcessor.from_pretrained(sft_dir),
        test,
        eval_args,
    )
    print(f"SFT ({sft_seconds:.0f} s): " + ", ".join(f"{k} {v:.2f}" for k, v in sft_scores.items()), flush=True)

    results = {}
    for name, overrides in variants:
        runs = []
        for seed in args.seeds:
            result = run_variant(args, workdir, sft_dir, name, overrides, seed, eval_args)
            runs.append(result)
            print(
                f"{name} seed {seed}: "
                + ", ".join(f"Δ{k} {result['scores'][k] - sft_scores[k]:+.2f}" for k in METRICS)
                + f" ({result['seconds_per_iteration']:.2f} s, {result['cpu_seconds_per_iteration']:.2f} CPU s per iteration)",
                flush=True,
            )
        results[name] = {"overrides": overrides, **summarise(runs, sft_scores)}

    rows = [
        [
            name,
            *(
                f"{r[f'{m}_delta_mean']:+.2f} (min {r[f'{m}_delta_min']:+.2f}, {r[f'{m}_improved']}/{len(args.seeds)})"
                for m in METRICS
            ),
            fmt(r["seconds_per_iteration_median"], ".2f"),
            fmt(r["cpu_seconds_per_iteration_median"], ".2f"),
        ]
        for name, r in results.items()
    ]
    table = print_table(["variant", *(f"Δ {m}" for m in METRICS), "s/iteration", "CPU s/iteration"], rows)
    payload = dict(
        benchmark="rl_gain",
        machine=info,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        held_out_samples=len(test),
        sft=dict(scores=sft_scores, seconds=sft_seconds),
        results=results,
        table=table,
    )
    write_json(args.output, payload)
    if not args.no_plot:
        plot(args.output.with_suffix(".png"), results, args.seeds)
    return payload


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, help="`NAME: key=value ...` (see the module docstring)."
    )
    parser.add_argument(
        "--sft_overrides",
        default={},
        type=lambda text: parse_variant(f"sft: {text}")[1],
        help="`key=value ...` over demo_sft.yaml for the one SFT run (e.g. `image_slot_embeddings=false`).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--demo_num_test", type=int, default=300, help="Held-out samples (≥ 200 for a study).")
    parser.add_argument(
        "--demo_num_train", type=int, default=None, help="Training samples (default: the demo configs')."
    )
    parser.add_argument(
        "--tokenize",
        default="ptb",
        help="Tokenisation of ROUGE-L / CIDEr: `ptb` as recipes/evaluate.py (Java), or `none`.",
    )
    parser.add_argument(
        "--eval_max_new_tokens", type=int, default=64, help="Longest held-out decode (as demo_evaluate.yaml)."
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default).")
    parser.add_argument(
        "--quick", action="store_true", help="Smoke test: 4 SFT steps, 2 RL iterations, whitespace tokenisation."
    )
    parser.add_argument("--no_plot", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "rl_gain.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokenize, args.eval_max_new_tokens = "none", 8
        args.demo_num_train, args.demo_num_test = args.demo_num_train or 16, min(args.demo_num_test, 8)
    return run_in_workdir(args, run, prefix="bench_rl_gain_")


if __name__ == "__main__":
    main()
