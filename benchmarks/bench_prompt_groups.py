"""k completions per prompt: what a PPO iteration with k = 4 costs over one with k = 1 on the same prompts, with each
prompt encoded once for its k completions (`encode_prompt_once`, the default) and once per completion (before).

    OMP_NUM_THREADS=1 python benchmarks/bench_prompt_groups.py --size tiny --rounds 3

Each round times, in one process and alternating, `--iterations` PPO iterations (GRPO-style: group baseline, no value
head, β > 0 so the reference forward runs too) of three trainers on the same `--prompts` demo prompts per iteration:
k = 1; k = 4 encoding each prompt once; k = 4 encoding it per completion. Reported: medians and per-round ratios
`k4_over_k1` (once) and `k4_over_k1_per_completion`, `once_over_per_completion`. CPU time of the process (one torch
thread: its wall time on an idle machine) is the measure; wall time is in the JSON too.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info
from tables import fmt, median, paired_ratios, print_table, write_json

from tippo_rl import load_artmuse, make_demo_dataset
from tippo_rl.presets import build_tippo_by_size
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_trainer import PPOTrainer


def length_reward(completions, **kwargs) -> list[float]:
    return [float(len(text)) for text in completions]


def trainer_for(model, processor, train, workdir: Path, prompts: int, k: int, once: bool, args) -> PPOTrainer:
    config = PPOConfig(
        output_dir=str(workdir / f"k{k}-{once}"), per_device_train_batch_size=prompts * k, num_generations=k,
        use_value_head=False, advantage_baseline="group" if k > 1 else "none", kl_coef=0.05,
        max_new_tokens=args.max_new_tokens, total_iterations=args.iterations, num_ppo_epochs=1,
        encode_prompt_once=once, report_to="none", use_cpu=True, save_strategy="no", logging_steps=10_000,
        disable_tqdm=True, feature_cache_dir=str(workdir / "cache"), seed=0,
    )  # fmt: skip
    return PPOTrainer(copy.deepcopy(model), config, processor, train, reward_funcs=[length_reward])


def timed_train(trainer: PPOTrainer) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per timed train()")
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, processor = build_tippo_by_size(args.size)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        data = make_demo_dataset(workdir / "demo", num_train=args.prompts * args.iterations, num_test=1)
        train = load_artmuse(data / "train.jsonl")
        trainers = {
            "k1": trainer_for(model, processor, train, workdir, args.prompts, 1, True, args),
            "k4_once": trainer_for(model, processor, train, workdir, args.prompts, 4, True, args),
            "k4_per_completion": trainer_for(model, processor, train, workdir, args.prompts, 4, False, args),
        }
        for trainer in trainers.values():  # warm-up: caches, allocator, first-call overheads
            timed_train(trainer)
        cpu, wall = {name: [] for name in trainers}, {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                seconds, wall_seconds = timed_train(trainer)
                cpu[name].append(seconds)
                wall[name].append(wall_seconds)
    ratios = {
        "k4_over_k1": paired_ratios(cpu["k4_once"], cpu["k1"]),
        "k4_over_k1_per_completion": paired_ratios(cpu["k4_per_completion"], cpu["k1"]),
        "once_over_per_completion": paired_ratios(cpu["k4_once"], cpu["k4_per_completion"]),
    }
    rows = [[name, fmt(median(cpu[name])), fmt(median(wall[name]))] for name in trainers]
    rows += [[name, fmt(median(values)), ", ".join(fmt(v) for v in values)] for name, values in ratios.items()]
    print_table(["measure", "median (CPU s | ratio)", "wall s | per round"], rows)
    result = {
        "settings": vars(args) | {"output": str(args.output)},
        "machine": machine_info(),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "ratios": ratios,
        "medians": {name: median(values) for name, values in ratios.items()},
    }
    write_json(args.output or Path(__file__).parent / "results" / f"prompt_groups_{args.size}.json", result)
    return result


if __name__ == "__main__":
    main()
