"""Reward plug-in: penalise completions that repeat themselves (a greedy decode looping to the length cap).

TRL's `trl.rewards.get_repetition_penalty_reward(ngram_size, max_penalty)` is a factory; this file makes it a plug-in
that the configs can name. The penalty of a completion is `max_penalty · (1 − distinct n-grams / n-grams)` over its
token ids, in [max_penalty, 0]: 0 for a completion without a repeated n-gram. Token ids, so any tokenizer works.

    --reward_funcs literal semantic rewards/repetition_penalty.py:repetition_penalty --reward_weights 1 1 0.5

or `rewards/repetition_penalty.py:RepetitionPenalty` with `ngram_size` / `max_penalty` in `reward_init_kwargs`.
"""

from __future__ import annotations

from trl.rewards import get_repetition_penalty_reward


class RepetitionPenalty:
    """TRL's repetition penalty as a class plug-in (init kwargs `ngram_size`, default 3, and `max_penalty`, default −1)."""

    __name__ = "repetition_penalty"

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0):
        self.penalty = get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=max_penalty)

    def __call__(self, completion_ids, **kwargs) -> list[float]:
        return self.penalty(completion_ids=completion_ids)


repetition_penalty = RepetitionPenalty()  # trigrams, penalty in [−1, 0]
