"""A reward plug-in for the multi-process tests of `num_generations`: it fails the run unless every k consecutive rows
it scores are one prompt with its own columns, and records the ids each process scored (one JSON line per batch)."""

import json
import os
from pathlib import Path

from tippo_rl.rewards import literal_reward


class GroupAlignment:
    def __init__(self, k: int, record_dir: str):
        self.k, self.record_dir = k, Path(record_dir)

    def __call__(self, prompts, completions, reference, id, title, **columns):
        if len(id) % self.k == 0:  # a rollout batch (not an evaluation or a greedy decode of one row per prompt)
            for start in range(0, len(id), self.k):
                rows = range(start, start + self.k)
                for name, values in (("id", id), ("reference", reference), ("title", title), ("prompts", prompts)):
                    if len({values[i] for i in rows}) != 1:
                        raise ValueError(
                            f"rows {start}..{start + self.k - 1} are not one prompt: {name} {[values[i] for i in rows]}"
                        )
        self.record_dir.mkdir(parents=True, exist_ok=True)
        with open(self.record_dir / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(json.dumps(list(id)) + "\n")
        return literal_reward(completions, reference)
