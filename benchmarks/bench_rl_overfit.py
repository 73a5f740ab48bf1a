"""Can RL raise the greedy reward on the very prompts it trains on? A diagnostic for issue 22.

From an SFT model of `bench_rl_gain.py`'s work folder, the plain `PPOTrainer` (default: SCST with the CIDEr-D reward,
k = 4, T = 0.5, the demo's learning rate and KL) trains on only `--num_prompts` training scenes for the demo's 80
iterations (20 passes over 64 prompts), then decodes those same prompts greedily again, and the 300 held-out scenes.
A trainer whose dynamics work raises its reward on prompts it has seen twenty times, whatever it does to held-out ones.
`--prompts wrong` trains on the scenes whose greedy decode misses its reference instead (among the first
`--candidates` training scenes): every prompt then carries signal, and the held-out split shows whether fixing the
training scenes' errors carries over. `exact_match` (below) is a reward plug-in for that: 1 when the completion is the
reference (`reward_funcs=[benchmarks/bench_rl_overfit.py:exact_match]`).
The control (`--ce_steps`, default 320 = the RL run's optimizer steps): SFT's NTP loss on the same prompts, batch 16,
Adam at the RL learning rate, shows whether the model can fit those prompts at all.

    python benchmarks/bench_rl_gain.py --langs zh --sft_seeds 1 --rl_seeds --workdir outputs/bench_rl_gain
    python benchmarks/bench_rl_overfit.py --lang zh --sft_seed 1 --workdir outputs/bench_rl_gain \\
        --variants "scst:" "scst_t1_kl0: temperature=1.0 kl_coef=0" "lr1e-3: temperature=1.0 kl_coef=0 learning_rate=1e-3"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rl_gain as gain  # noqa: E402
from machine import machine_info  # noqa: E402
from tables import print_table, write_json  # noqa: E402

from tippo_rl.data_collator import TIPPoDataCollator, model_inputs  # noqa: E402
from tippo_rl.presets import load_model_and_processor  # noqa: E402


SCST = dict(
    reward_funcs=["cider"],
    reward_weights=[1.0],
    use_value_head=False,
    advantage_baseline="greedy",
    num_generations=4,
    temperature=0.5,
)


def exact_match(completions, reference, **kwargs) -> list[float]:
    """1.0 where the completion is its reference (surrounding spaces aside), else 0.0."""
    return [float(completion.strip() == target.strip()) for completion, target in zip(completions, reference)]


def evaluation_settings(args) -> argparse.Namespace:
    """What `bench_rl_gain`'s data and evaluation helpers read: its defaults (300 held-out scenes, greedy, 64 tokens)."""
    return argparse.Namespace(
        demo_num_test=300, demo_num_train=None, tokenize=None, eval_max_new_tokens=64, quick=args.quick
    )


def starting_point(args) -> dict:
    """What every run shares, computed once from the SFT model they all start from: the training prompts, their greedy
    scores, the held-out split's, and how sure the model is where it goes wrong (`first_error_probabilities`)."""
    from tippo_rl import TIPPoForConditionalGeneration, TIPPoProcessor

    sft_dir = args.workdir / f"sft_{args.lang}_{args.sft_seed}"
    model, processor = TIPPoForConditionalGeneration.from_pretrained(sft_dir), TIPPoProcessor.from_pretrained(sft_dir)
    settings = evaluation_settings(args)
    train_split, test = gain.demo_datasets(settings, args.workdir, args.lang, max_images=model.config.max_images)
    prompts = training_prompts(args, model, processor, train_split, settings)
    return dict(
        prompts=prompts,
        test=test,
        before=gain.evaluate(model, processor, prompts, args.lang, settings, all_predictions=True),
        held_out_before=gain.evaluate(model, processor, test, args.lang, settings),
        held_out_first_errors=first_error_probabilities(model, processor, test),
    )


def scored_training(args, start: dict, model, processor, train, overrides: dict) -> dict:
    """`train(model, prompts)` (which returns the trained model) on the `starting_point`'s prompts, then the same
    prompts and the held-out split decoded again, beside the starting point's scores."""
    settings = evaluation_settings(args)
    prompts, before = start["prompts"], start["before"]
    model = train(model, prompts)
    after = gain.evaluate(model, processor, prompts, args.lang, settings, all_predictions=True)
    held_out = gain.evaluate(model, processor, start["test"], args.lang, settings)
    keep = ("scores", "fields")
    return dict(
        overrides=overrides,
        num_prompts=len(prompts),
        trained_prompts_before={k: before[k] for k in keep},
        trained_prompts_after={k: after[k] for k in keep},
        trained_prompts_exact={"before": exact_count(before, prompts), "after": exact_count(after, prompts)},
        held_out_before={k: start["held_out_before"][k] for k in keep},
        held_out_first_errors=start["held_out_first_errors"],
        held_out_after={k: held_out[k] for k in keep},
    )


def exact_count(evaluation: dict, prompts) -> int:
    """How many of `prompts` the evaluated greedy decodes reproduce exactly."""
    return int(sum(exact_match(evaluation["predictions"], prompts["reference"])))


@torch.no_grad()
def first_error_probabilities(model, processor, dataset, batch_size: int = 50) -> dict:
    """How sure the model is where it goes wrong: each scene's reference teacher-forced, at the first token whose
    argmax is not the reference's, the reference token's probability (T = 1) and rank (0 = the argmax). Exploration
    can find the right token there only if that probability is not negligible."""
    collator, probabilities, ranks = TIPPoDataCollator(processor), [], []
    model.eval()
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels = batch["labels"]
        logits = model(**model_inputs(batch), labels=labels).logits.float()
        for row_logits, row_labels in zip(logits, labels):
            keep = row_labels != -100
            row_logits, targets = row_logits[keep], row_labels[keep]
            wrong = (row_logits.argmax(-1) != targets).nonzero()
            if len(wrong):
                t = wrong[0].item()
                probabilities.append(torch.softmax(row_logits[t], -1)[targets[t]].item())
                ranks.append(int((row_logits[t] > row_logits[t, targets[t]]).sum()))
    probabilities.sort()
    return dict(
        scenes=len(dataset),
        with_an_error=len(probabilities),
        median_probability=probabilities[len(probabilities) // 2] if probabilities else None,
        share_above_0_05=sum(p > 0.05 for p in probabilities) / max(len(probabilities), 1),
        share_ranked_second=sum(r == 1 for r in ranks) / max(len(ranks), 1),
    )


def training_prompts(args, model, processor, train_split, settings):
    """`--prompts first`: the first `--num_prompts` training scenes; `wrong`: those (at most `--num_prompts`) among the
    first `--candidates` whose greedy decode is not their reference."""
    if args.prompts == "first":
        return train_split.select(range(args.num_prompts))
    candidates = train_split.select(range(min(args.candidates, len(train_split))))
    decoded = gain.evaluate(model, processor, candidates, args.lang, settings, all_predictions=True)["predictions"]
    wrong = [i for i, correct in enumerate(exact_match(decoded, candidates["reference"])) if not correct]
    return candidates.select(wrong[: args.num_prompts])


def run_variant(args, start: dict, name: str, overrides: dict) -> dict:
    """SCST (with the variant's overrides) on the prompts, through the plain `PPOTrainer`."""
    config = yaml.safe_load(gain.RL_CONFIG.read_text())
    config.update(
        gain.common_settings(evaluation_settings(args), args.workdir, args.lang),
        model_name_or_path=str(args.workdir / f"sft_{args.lang}_{args.sft_seed}"),
        output_dir=str(args.workdir / f"overfit_{args.lang}_{args.sft_seed}_{name}"),
        seed=args.rl_seed,
        save_strategy="no",
        eval_strategy="no",
        **SCST,
    )
    if args.quick:
        config.update(gain.QUICK_RL)
    config.update(overrides)
    script_args, training_args, model_args = gain.parse_with_config(
        gain.ppo_settings(config),
        (gain.TIPPoScriptArguments, gain.PPOConfig, gain.TIPPoModelConfig),
        args.workdir / f"overfit_{args.lang}_{args.sft_seed}_{name}.yaml",
    )
    model, processor = load_model_and_processor(model_args, lang=script_args.demo_lang)

    def train(model, prompts):
        trainer = gain.PPOTrainer(model=model, args=training_args, processor=processor, train_dataset=prompts)
        trainer.train()
        return trainer._policy(trainer.accelerator.unwrap_model(trainer.model))

    return scored_training(args, start, model, processor, train, overrides)


def cross_entropy_control(args, start: dict) -> dict:
    """The NTP loss on the same prompts for `--ce_steps` Adam steps (batch 16, lr 1e-4)."""
    from tippo_rl import TIPPoForConditionalGeneration, TIPPoProcessor

    sft_dir = args.workdir / f"sft_{args.lang}_{args.sft_seed}"
    model, processor = TIPPoForConditionalGeneration.from_pretrained(sft_dir), TIPPoProcessor.from_pretrained(sft_dir)

    def train(model, prompts):
        collator, rows = TIPPoDataCollator(processor), list(prompts)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        generator = torch.Generator().manual_seed(args.rl_seed)
        model.train()
        for _ in range(args.ce_steps):
            picked = torch.randperm(len(rows), generator=generator)[:16].tolist()
            batch = collator([rows[i] for i in picked])
            model(**model_inputs(batch), labels=batch["labels"]).ntp_loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model.eval()

    return scored_training(
        args, start, model, processor, train, dict(loss="ntp", steps=args.ce_steps, learning_rate=1e-4, batch=16)
    )


def change(run: dict, field: str, key: str, digits: int) -> str:
    """`before → after` of one score or scene field on the trained prompts."""
    before, after = run["trained_prompts_before"][field][key], run["trained_prompts_after"][field][key]
    return f"{before:.{digits}f} → {after:.{digits}f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang", default="zh", choices=["en", "zh"])
    parser.add_argument("--sft_seed", type=int, default=1)
    parser.add_argument("--rl_seed", type=int, default=0)
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--prompts", default="first", choices=["first", "wrong"], help="Which training scenes.")
    parser.add_argument("--candidates", type=int, default=2000, help="`--prompts wrong`: the scenes searched.")
    parser.add_argument("--variants", nargs="+", default=["scst:"], help="`NAME: key=value ...` over SCST's settings.")
    parser.add_argument("--ce_steps", type=int, default=320, help="The NTP control's steps (0: no control).")
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_rl_gain"), help="bench_rl_gain's folder.")
    parser.add_argument("--quick", action="store_true", help="Smoke test: 2 RL iterations, 8 prompts, 2 NTP steps.")
    parser.add_argument("--output", type=Path, default=gain.RESULTS / "rl_overfit.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_prompts, args.ce_steps, args.candidates = 8, 2, 32
    torch.set_num_threads(1)
    start = starting_point(args)
    runs = {
        name: run_variant(args, start, name, overrides) for name, overrides in map(gain.parse_variant, args.variants)
    }
    if args.ce_steps:
        runs["control: NTP loss"] = cross_entropy_control(args, start)
    rows = [
        [
            name,
            change(run, "scores", "CIDEr", 1),
            change(run, "scores", "ROUGE-L", 2),
            change(run, "fields", "colour", 1),
            change(run, "fields", "count", 1),
            f"{run['trained_prompts_exact']['before']} → {run['trained_prompts_exact']['after']} of {run['num_prompts']}",
            f"{run['held_out_before']['scores']['ROUGE-L']:.2f} → {run['held_out_after']['scores']['ROUGE-L']:.2f}",
        ]
        for name, run in runs.items()
    ]
    table = print_table(
        [
            "variant",
            "CIDEr-D (trained prompts)",
            "ROUGE-L (trained)",
            "colour (trained)",
            "count (trained)",
            "exact (trained)",
            "held-out ROUGE-L",
        ],
        rows,
    )
    result = dict(
        benchmark="rl_overfit", machine=machine_info(), settings=vars(args) | {"scst": SCST}, runs=runs, table=table
    )
    write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
