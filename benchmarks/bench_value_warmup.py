"""The value head's position bias, and the critic warm-up that removes it.

A value head that starts at V ≡ 0 makes GAE's first advantages a function of position: with the sequence return as the
last token's reward, Â_t = (γλ)^(T−1−t)·R before whitening, so after whitening the first token of a long completion is
below the batch mean — negative — whatever the completion's quality. This benchmark trains value-head PPO with the
literal reward (`PPOTrainer`, `use_value_head: true`, GAE) from the demo SFT model, with and without
`value_warmup_iterations`, and with `value_head_init: mean_return`, and reports per iteration the share of completions whose first token's (whitened) advantage
is negative (`advantages/first_token_negative`; ~0.5 without a position bias).

    python benchmarks/bench_value_warmup.py --warmup 5 --iterations 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_rl_gain import RESULTS, rl_result, sft_result  # noqa: E402
from machine import run_in_workdir  # noqa: E402
from tables import print_table, write_json  # noqa: E402


def run(args, info: dict, workdir: Path) -> dict:
    # The seed study's SFT and RL runs (bench_rl_gain), English, scored with whitespace tokens.
    args.sft_overrides, args.tokenize, args.eval_max_new_tokens = {}, "none", 64
    if args.quick:
        args.demo_num_train, args.demo_num_test, args.eval_max_new_tokens = args.demo_num_train or 16, 8, 8
    sft_result(args, workdir, "en", args.seed)
    base = dict(
        trainer="ppo",
        reward_funcs=["literal"],
        use_value_head=True,
        advantage_baseline="none",
        total_iterations=args.iterations,
        logging_steps=1,
    )
    results = {}
    runs = (
        ("V ≡ 0, no warm-up", "zero", 0),
        (f"V ≡ 0, warm-up {args.warmup}", "zero", args.warmup),
        ("V starts at the mean return", "mean_return", 0),
    )
    for name, init, warmup in runs:
        overrides = {**base, "value_head_init": init, "value_warmup_iterations": warmup}
        history = rl_result(args, workdir, "en", args.seed, f"{init}_{warmup}", overrides, args.seed)["log_history"]
        fractions = [
            entry["advantages/first_token_negative"] for entry in history if "advantages/first_token_negative" in entry
        ]
        results[name] = dict(
            value_head_init=init,
            value_warmup_iterations=warmup,
            first_token_negative=fractions,
            after_warmup_mean=statistics.fmean(fractions[warmup : warmup + args.measure]),
        )
    rows = [
        [name, r["value_warmup_iterations"], f"{r['first_token_negative'][0]:.2f}", f"{r['after_warmup_mean']:.2f}"]
        for name, r in results.items()
    ]
    table = print_table(
        ["run", "warm-up iterations", "first iteration", f"first {args.measure} policy iterations (mean)"], rows
    )
    payload = dict(
        benchmark="value_warmup",
        machine=info,
        settings={k: str(v) for k, v in vars(args).items()},
        results=results,
        table=table,
    )
    write_json(args.output, payload)
    return payload


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=5, help="value_warmup_iterations of the warm-up run.")
    parser.add_argument("--iterations", type=int, default=10, help="PPO iterations of each run.")
    parser.add_argument("--measure", type=int, default=3, help="Policy iterations (after the warm-up) averaged.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo_num_test", type=int, default=48)
    parser.add_argument("--demo_num_train", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "value_warmup.json")
    return run_in_workdir(parser.parse_args(argv), run, prefix="bench_value_warmup_")


if __name__ == "__main__":
    main()
