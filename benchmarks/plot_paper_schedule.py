"""Â of Eq. 6 over a paper-length PolishPPO run under `gamma_schedule: paper`, simulated (no model is trained).

Each iteration m of M draws a batch of rewards from fixed distributions (a policy that does not change: what the
schedule alone does to Â), forms G_m = γ^m·R_literal + γ^(M−m)·R_semantic and normalises it with the trainer's own
`ReturnStatistics` (Eq. 6), once with W = all iterations (the paper's reading, `advantage_window: null`) and once with a
short window. Plots the batch mean of Â (and its 5–95% band) against m, and writes a JSON summary next to the PNG.

    python benchmarks/plot_paper_schedule.py            # M = 20000, as in the paper
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: benchmarks never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from machine import machine_info  # noqa: E402
from tables import write_json  # noqa: E402

from tippo_rl.trainer.ppo_math import ReturnStatistics  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results"


def simulate(
    M: int,
    gamma: float,
    batch: int,
    window: int | None,
    literal: tuple[float, float],
    semantic: tuple[float, float],
    seed: int = 0,
) -> dict[str, list[float]]:
    """Per iteration: the batch mean of G_m and of Â, and Â's 5% and 95% quantiles."""
    generator = torch.Generator().manual_seed(seed)
    statistics = ReturnStatistics(window)
    out = {"G_mean": [], "A_mean": [], "A_q05": [], "A_q95": []}
    for m in range(M):
        R_literal = (literal[0] + literal[1] * torch.randn(batch, generator=generator, dtype=torch.float64)).clamp(
            0, 1
        )
        R_semantic = (semantic[0] + semantic[1] * torch.randn(batch, generator=generator, dtype=torch.float64)).clamp(
            -1, 1
        )
        G = gamma**m * R_literal + gamma ** (M - m) * R_semantic  # G_m, paper schedule
        statistics.update(G)
        A = (G - statistics.mean) / (statistics.std + 1e-8)  # Eq. 6
        out["G_mean"].append(G.mean().item())
        out["A_mean"].append(A.mean().item())
        out["A_q05"].append(A.quantile(0.05).item())
        out["A_q95"].append(A.quantile(0.95).item())
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total_iterations", type=int, default=20_000, help="M (paper: 20K).")
    parser.add_argument("--gamma", type=float, default=0.95, help="γ of G_m (paper: 0.95).")
    parser.add_argument("--batch", type=int, default=64, help="Completions per iteration.")
    parser.add_argument("--window", type=int, default=4, help="The short window W to compare with W = all.")
    parser.add_argument(
        "--literal",
        type=float,
        nargs=2,
        default=[0.64, 0.12],
        help="Mean and std of R_literal (the demo's SFT policy: ~0.64).",
    )
    parser.add_argument("--semantic", type=float, nargs=2, default=[0.80, 0.08], help="Mean and std of R_semantic.")
    parser.add_argument("--output", type=Path, default=RESULTS / "paper_schedule_advantage.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    M = args.total_iterations
    runs = {
        "W = all (paper)": simulate(M, args.gamma, args.batch, None, tuple(args.literal), tuple(args.semantic)),
        f"W = {args.window}": simulate(
            M, args.gamma, args.batch, args.window, tuple(args.literal), tuple(args.semantic)
        ),
    }
    figure, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    steps = list(range(M))
    axes[0].plot(steps, runs["W = all (paper)"]["G_mean"], color="black")
    axes[0].set_ylabel("batch mean of G_m")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    for (name, run), color in zip(runs.items(), ("tab:red", "tab:blue")):
        axes[1].plot(steps, run["A_mean"], color=color, label=f"{name}: batch mean of Â")
        axes[1].fill_between(steps, run["A_q05"], run["A_q95"], color=color, alpha=0.2, label=f"{name}: 5–95% of Â")
    axes[1].axhline(0, color="grey", linewidth=0.5)
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[1].set_ylabel("Â (Eq. 6)")
    axes[1].set_xlabel(f"PPO iteration m (M = {M}, γ = {args.gamma}, gamma_schedule: paper)")
    axes[1].legend(fontsize=8, loc="upper left")
    figure.suptitle(
        f"Â of Eq. 6 under gamma_schedule: paper, M = {M}: W = all is the same negative value for every\n"
        "sample (shrinking as the zero returns pile up), then large and positive at the end; W = 4 is 0"
    )
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")

    paper = runs["W = all (paper)"]
    middle = slice(M // 10, M - M // 10)
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "W=all": {
            "A_mean_middle_80pct": sum(paper["A_mean"][middle]) / len(paper["A_mean"][middle]),
            "A_spread_middle_80pct_max": max(
                q95 - q05 for q05, q95 in zip(paper["A_q05"][middle], paper["A_q95"][middle])
            ),
            "A_mean_last_iteration": paper["A_mean"][-1],
            "A_q95_last_iteration": paper["A_q95"][-1],
            "A_mean_first_iteration": paper["A_mean"][0],
            "A_mean_at": {str(m): paper["A_mean"][m] for m in (500, 1000, 5000, 10000, 15000, M - 500)},
        },
        f"W={args.window}": {
            "A_mean_middle_80pct_abs_max": max(abs(a) for a in runs[f"W = {args.window}"]["A_mean"][middle])
        },
    }
    write_json(args.output.with_suffix(".json"), summary)
    return summary


if __name__ == "__main__":
    main()
