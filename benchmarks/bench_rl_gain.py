"""Does the RL stage beat its SFT model? A seed study: SFT seeds × RL seeds × languages, paired on held-out samples.

For every language and SFT seed, the SFT recipe's own `main` trains `recipes/configs/demo_sft.yaml` (with the seed,
the language and `--sft_overrides`); then every variant of the demo PolishPPO config (`recipes/configs/demo_polishppo.yaml`
plus the variant's overrides) runs from that SFT model for every RL seed. Each model is decoded greedily on the
held-out split (`--demo_num_test`, ≥ 300 for a study) and scored as `recipes/evaluate.py` scores the demo: BLEU-4,
ROUGE-L and CIDEr-D (pycocoevalcap; PTB tokens for English, jieba words for Chinese), the literal reward of Eq. 7,
and every scene field (place, count, colour, shape, object in order, objects in any order).

RL − SFT is a paired difference: per (SFT seed, RL seed) run on the same samples, and over all runs of a variant the
mean ± sd and a two-level paired bootstrap 95% CI of the mean Δ (resample SFT seeds, then held-out samples; per-sample
ROUGE-L and CIDEr-D with the test set's document frequencies fixed). Models are cached in `--workdir`, so a second
invocation with more seeds or variants trains only what is missing.

A variant is `NAME: key=value key=value ...`: fields of the demo PolishPPO YAML (values read as YAML:
`advantage_window=null`, `reward_funcs=[literal,semantic]`), plus `trainer=ppo` for the plain `PPOTrainer` (fields
PPOConfig lacks are then dropped).

    python benchmarks/bench_rl_gain.py --langs en zh --sft_seeds 0 1 2 --rl_seeds 0 1          # the reported study
    python benchmarks/bench_rl_gain.py --sft_seeds 100 101 --rl_seeds 0 --variants "demo:" "kl0: kl_coef=0"  # tuning
    python benchmarks/bench_rl_gain.py --quick      # a smoke test: tiny runs, a few seconds each
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from machine import machine_info  # noqa: E402
from tables import print_table, write_json  # noqa: E402
from trl import TrlParser  # noqa: E402

from tippo_rl.data import load_datasets  # noqa: E402
from tippo_rl.demo.scenes import scene_field_accuracy  # noqa: E402
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
SCORES = ("BLEU-4", "ROUGE-L", "CIDEr", "literal")
FIELDS = ("place", "count", "colour", "shape", "object", "objects_any_order")
BOOTSTRAPPED = ("ROUGE-L", "CIDEr")  # per-sample scores whose corpus score is their mean
TOKENIZE = {"en": "ptb", "zh": "jieba"}  # as recipes/configs/demo_evaluate.yaml and cococn_evaluate.yaml score them
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


def parse_with_config(config: dict, classes: tuple, path: Path):
    """Parse a config dict as the recipes parse their YAML (through a YAML file: nulls and lists as in the configs)."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return TrlParser(classes).parse_args_and_config(args=["--config", str(path)])


def common_settings(args, workdir: Path, lang: str) -> dict:
    return dict(
        demo_dir=str(workdir / f"demo_data_{lang}"),
        demo_lang=lang,
        demo_num_test=args.demo_num_test,
        feature_cache_dir=str(workdir / "cache"),
        disable_tqdm=True,
        report_to="none",
        # Always written out: a folder made for another training size would be remade (the test split does not
        # depend on it, but a second process reading the images then would).
        demo_num_train=args.demo_num_train or yaml.safe_load(SFT_CONFIG.read_text())["demo_num_train"],
        # --demo_annotator_confusion where given (bench_rl_overfit and bench_value_warmup share these settings).
        **(
            {}
            if getattr(args, "demo_annotator_confusion", None) is None
            else {"demo_annotator_confusion": args.demo_annotator_confusion}
        ),
    )


def train_sft(args, workdir: Path, lang: str, seed: int) -> Path:
    """`demo_sft.yaml` with the language, the seed and `--sft_overrides`; skipped when the model is already there."""
    output_dir = workdir / f"sft_{lang}_{seed}"
    if (output_dir / "model.safetensors").exists():
        return output_dir
    config = yaml.safe_load(SFT_CONFIG.read_text())
    config.update(common_settings(args, workdir, lang), output_dir=str(output_dir), save_strategy="no", seed=seed)
    if args.quick:
        config.update(QUICK_SFT)
    config.update(args.sft_overrides)
    recipe = load_recipe("sft")
    parsed = parse_with_config(
        config, (TIPPoScriptArguments, recipe.TIPPoSFTConfig, TIPPoModelConfig), workdir / f"sft_{lang}_{seed}.yaml"
    )
    recipe.main(*parsed)
    return output_dir


def evaluate(model, processor, dataset, lang: str, args, all_predictions: bool = False) -> dict:
    """Greedy decode of the held-out split: corpus scores, scene fields (all ×100) and per-sample ROUGE-L / CIDEr;
    the first five decodes, or every one (`all_predictions`, in the dataset's order)."""
    eval_args = EvaluationArguments(
        metrics=["bleu", "rouge_l", "cider"],
        tokenize=args.tokenize or TOKENIZE[lang],
        batch_size=64,
        max_new_tokens=args.eval_max_new_tokens,
        device="cpu",
    )
    eval_args.for_language(lang)
    predictions, result, _ = score_model(model, processor, dataset, eval_args)
    ids = list(dataset["id"])
    texts = [predictions[i] for i in ids]
    literal = literal_reward(texts, dataset["reference"])
    scores = {name: 100 * result.corpus[name] for name in ("BLEU-4", "ROUGE-L", "CIDEr")}
    scores["literal"] = 100 * statistics.fmean(literal)
    fields = scene_field_accuracy(texts, [refs[0] for refs in dataset["references"]], lang)
    per_sample = {name: [100 * result.per_sample[i][name] for i in ids] for name in BOOTSTRAPPED}
    return dict(
        scores=scores,
        fields={k: 100 * v for k, v in fields.items()},
        per_sample=per_sample,
        predictions=texts if all_predictions else texts[:5],
    )


def demo_datasets(args, workdir: Path, lang: str, max_images: int = 5):
    """The demo's (train, held-out) splits in the work folder, as every run of the study reads them."""
    script_args = TIPPoScriptArguments(
        dataset="demo", **{k: v for k, v in common_settings(args, workdir, lang).items() if k.startswith("demo_")}
    )
    return load_datasets(script_args, max_images=max_images)


def held_out(args, workdir: Path, lang: str):
    return demo_datasets(args, workdir, lang)[1]


def ppo_settings(config: dict) -> dict:
    """The keys of a demo PolishPPO config that `PPOConfig` and the script and model arguments know (the rest dropped)."""
    known = set().union(
        *({f.name for f in dataclasses.fields(c)} for c in (PPOConfig, TIPPoScriptArguments, TIPPoModelConfig))
    )
    return {key: value for key, value in config.items() if key in known}


def cached(path: Path, compute) -> dict:
    """A run's result, computed once and kept in `path` (JSON)."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result))
    return result


def sft_result(args, workdir: Path, lang: str, seed: int) -> dict:
    def compute():
        from tippo_rl import TIPPoForConditionalGeneration, TIPPoProcessor

        start = time.perf_counter()
        sft_dir = train_sft(args, workdir, lang, seed)
        seconds = time.perf_counter() - start
        model = TIPPoForConditionalGeneration.from_pretrained(sft_dir)
        result = evaluate(model, TIPPoProcessor.from_pretrained(sft_dir), held_out(args, workdir, lang), lang, args)
        return dict(result, seconds=seconds)

    return cached(workdir / f"sft_{lang}_{seed}.json", compute)


def rl_result(args, workdir: Path, lang: str, sft_seed: int, name: str, overrides: dict, seed: int) -> dict:
    """One RL run of a variant from the SFT model of `sft_seed`, scored on the held-out split."""

    def compute():
        settings = dict(overrides)
        trainer_kind = settings.pop("trainer", "polishppo")
        config_class, trainer_class = {
            "polishppo": (PolishPPOConfig, PolishPPOTrainer),
            "ppo": (PPOConfig, PPOTrainer),
        }[trainer_kind]
        config = yaml.safe_load(RL_CONFIG.read_text())
        config.update(
            common_settings(args, workdir, lang),
            model_name_or_path=str(workdir / f"sft_{lang}_{sft_seed}"),
            output_dir=str(workdir / f"rl_{lang}_{sft_seed}_{name}_{seed}"),
            seed=seed,
            save_strategy="no",
        )
        if args.quick:
            config.update(QUICK_RL)
        if "reward_funcs" in settings and "reward_weights" not in settings:
            config.pop("reward_weights", None)  # the YAML's weights belong to the YAML's rewards
        config.update(settings)
        if trainer_kind == "ppo":
            config = ppo_settings(config)
        script_args, training_args, model_args = parse_with_config(
            config,
            (TIPPoScriptArguments, config_class, TIPPoModelConfig),
            workdir / f"rl_{lang}_{sft_seed}_{name}_{seed}.yaml",
        )
        model, processor = load_model_and_processor(model_args, lang=script_args.demo_lang)
        train, test = load_datasets(script_args, max_images=model.config.max_images)
        trainer = trainer_class(
            model=model,
            args=training_args,
            processor=processor,
            train_dataset=train,
            eval_dataset=test if training_args.eval_strategy != "no" else None,  # greedy and sampled held-out rewards
        )
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        policy = trainer._policy(trainer.accelerator.unwrap_model(trainer.model))
        result = evaluate(policy, processor, test, lang, args)
        history = [
            {
                k: v
                for k, v in entry.items()
                if k.startswith(("rewards/", "returns/", "advantages/", "kl", "completions/", "baseline/", "eval_"))
            }
            for entry in trainer.state.log_history
        ]
        return dict(
            result,
            seconds=seconds,
            cpu_seconds_per_iteration=cpu_seconds / max(trainer.iteration, 1),
            log_history=[entry for entry in history if entry],
        )

    return cached(workdir / f"rl_{lang}_{sft_seed}_{name}_{seed}.json", compute)


def paired_bootstrap(pairs: list[tuple[list[float], list[float], int]], samples: int, rng: random.Random):
    """95% CI of the mean over runs of (RL − SFT), each run's score the mean of its per-sample scores. `pairs`: (RL
    per-sample, SFT per-sample, SFT seed) per run. Two levels: SFT seeds with replacement, then held-out samples
    (the same resampled samples for every run, as the runs share the test set)."""
    by_seed: dict[int, list[list[float]]] = {}
    for rl, sft, seed in pairs:
        by_seed.setdefault(seed, []).append([a - b for a, b in zip(rl, sft)])
    seeds, n = sorted(by_seed), len(pairs[0][0])
    means = []
    for _ in range(samples):
        drawn = [rng.choice(seeds) for _ in seeds]
        index = [rng.randrange(n) for _ in range(n)]
        runs = [statistics.fmean(d[i] for i in index) for seed in drawn for d in by_seed[seed]]
        means.append(statistics.fmean(runs))
    means.sort()
    return means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def summarise(runs: list[dict], args) -> dict:
    """Per variant and language: every run's Δ, mean ± sd of each score and field, and the bootstrap CIs."""
    out = {}
    for key in (*SCORES, *FIELDS):
        group = "scores" if key in SCORES else "fields"
        deltas = [run["rl"][group][key] - run["sft"][group][key] for run in runs]
        out[key] = dict(
            deltas=deltas,
            mean=statistics.fmean(deltas),
            sd=statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            sft_mean=statistics.fmean(run["sft"][group][key] for run in runs),
            rl_mean=statistics.fmean(run["rl"][group][key] for run in runs),
            improved=sum(d > 0 for d in deltas),
        )
    rng = random.Random(0)
    for key in BOOTSTRAPPED:
        pairs = [(run["rl"]["per_sample"][key], run["sft"]["per_sample"][key], run["sft_seed"]) for run in runs]
        out[key]["ci95"] = paired_bootstrap(pairs, args.bootstrap_samples, rng)
        for run, pair in zip(runs, pairs):  # each run's own CI: samples only
            run[f"{key}_ci95"] = paired_bootstrap([pair], args.bootstrap_samples, rng)
    out["ROUGE-L"]["bar"] = 0.1 * (100 - out["ROUGE-L"]["sft_mean"])  # 10% of the gap to 100
    out["CIDEr"]["relative_mean"] = out["CIDEr"]["mean"] / max(out["CIDEr"]["sft_mean"], 1e-9)
    return out


def spread(results: dict, group: str, key: str) -> str:
    values = [result[group][key] for result in results.values()]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def run(args) -> dict:
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    variants = [parse_variant(text) for text in args.variants]
    summary, all_runs, sft_by_lang = {}, [], {}
    for lang in args.langs:
        sft = sft_by_lang[lang] = {seed: sft_result(args, workdir, lang, seed) for seed in args.sft_seeds}
        for seed, result in sft.items():
            print(f"[{lang}] SFT seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in result["scores"].items()))
        for name, overrides in variants if args.rl_seeds else ():  # no RL seeds: an SFT seed study
            runs = []
            for sft_seed in args.sft_seeds:
                for seed in args.rl_seeds:
                    rl = rl_result(args, workdir, lang, sft_seed, name, overrides, seed)
                    run_ = dict(lang=lang, variant=name, sft_seed=sft_seed, rl_seed=seed, sft=sft[sft_seed], rl=rl)
                    runs.append(run_)
                    print(
                        f"[{lang}] {name} SFT {sft_seed} RL {seed}: "
                        + ", ".join(f"Δ{k} {rl['scores'][k] - sft[sft_seed]['scores'][k]:+.2f}" for k in SCORES)
                        + " | "
                        + ", ".join(f"Δ{k} {rl['fields'][k] - sft[sft_seed]['fields'][k]:+.1f}" for k in FIELDS),
                        flush=True,
                    )
            summary[f"{lang}/{name}"] = dict(lang=lang, variant=name, overrides=overrides, **summarise(runs, args))
            all_runs += runs

    headers = ["lang", "variant", "runs", "SFT ROUGE-L", "Δ ROUGE-L (CI)", "Δ CIDEr (CI)", "Δ CIDEr %", "Δ fields"]
    rows = []
    for s in summary.values():
        n = len(s["ROUGE-L"]["deltas"])
        rows.append(
            [
                s["lang"],
                s["variant"],
                n,
                f"{s['ROUGE-L']['sft_mean']:.2f}",
                f"{s['ROUGE-L']['mean']:+.2f} ± {s['ROUGE-L']['sd']:.2f} ({s['ROUGE-L']['ci95'][0]:+.2f}, {s['ROUGE-L']['ci95'][1]:+.2f})",
                f"{s['CIDEr']['mean']:+.1f} ± {s['CIDEr']['sd']:.1f} ({s['CIDEr']['ci95'][0]:+.1f}, {s['CIDEr']['ci95'][1]:+.1f})",
                f"{100 * s['CIDEr']['relative_mean']:+.1f}%",
                " ".join(f"{k} {s[k]['mean']:+.1f}" for k in FIELDS),
            ]
        )
    table = print_table(headers, rows)
    sft_table = print_table(
        ["lang", "SFT seeds", *SCORES, *FIELDS],
        [
            [
                lang,
                len(args.sft_seeds),
                *(spread(results, "scores", key) for key in SCORES),
                *(spread(results, "fields", key) for key in FIELDS),
            ]
            for lang, results in sft_by_lang.items()
        ],
    )
    for run_ in all_runs:  # the JSON keeps scores and fields; per-sample lists stay in the work folder
        for side in ("sft", "rl"):
            run_[side] = {k: v for k, v in run_[side].items() if k != "per_sample"}
    payload = dict(
        benchmark="rl_gain",
        machine=info,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        summary=summary,
        runs=all_runs,
        table=table,
        sft_table=sft_table,
        sft={
            lang: {seed: {k: v for k, v in r.items() if k != "per_sample"} for seed, r in results.items()}
            for lang, results in sft_by_lang.items()
        },
    )
    if args.output:
        write_json(args.output, payload)
    return payload


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["demo:"], help="`NAME: key=value ...` (module docstring).")
    parser.add_argument(
        "--sft_overrides",
        default={},
        type=lambda text: parse_variant(f"sft: {text}")[1],
        help="`key=value ...` over demo_sft.yaml for every SFT run.",
    )
    parser.add_argument("--langs", nargs="+", default=["en"], choices=["en", "zh"])
    parser.add_argument("--sft_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rl_seeds", type=int, nargs="*", default=[0, 1], help="None: SFT seeds only.")
    parser.add_argument("--demo_num_test", type=int, default=300, help="Held-out samples (≥ 300 for a study).")
    parser.add_argument("--demo_num_train", type=int, default=None, help="Training samples (default: the configs').")
    parser.add_argument(
        "--demo_annotator_confusion",
        type=float,
        default=None,
        help="Chance a training reference calls a purple object blue (default: the demo's, 0.6; 0: all right).",
    )
    parser.add_argument("--tokenize", default=None, help="Override the tokenisation (default: ptb en, jieba zh).")
    parser.add_argument("--eval_max_new_tokens", type=int, default=64, help="As demo_evaluate.yaml.")
    parser.add_argument("--bootstrap_samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default).")
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_rl_gain"), help="Models and results.")
    parser.add_argument("--quick", action="store_true", help="Smoke test: 4 SFT steps, 2 RL iterations.")
    parser.add_argument("--output", type=Path, default=RESULTS / "rl_gain.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokenize, args.eval_max_new_tokens = "none", 8
        args.demo_num_train, args.demo_num_test = args.demo_num_train or 16, min(args.demo_num_test, 8)
    return run(args)


if __name__ == "__main__":
    main()
