"""Reward plug-in: penalise completions that repeat themselves (a greedy decode looping to the length cap).

TRL's `trl.rewards.get_repetition_penalty_reward(ngram_size, max_penalty)` is a factory; this file makes it a plug-in
that the configs can name. The penalty of a completion is `max_penalty · (1 − distinct n-grams / n-grams)` over its
token ids, in [max_penalty, 0]: 0 for a completion without a repeated n-gram. Token ids, so any tokenizer works.

    --reward_funcs literal semantic rewards/repetition_penalty.py:repetition_penalty --reward_weights 1 1 0.5

or `rewards/repetition_penalty.py:RepetitionPenalty` with `ngram_size` / `max_penalty` in `reward_init_kwargs`. The same
class is the built-in `repetition_penalty` (`--reward_funcs literal semantic repetition_penalty`), which needs no path.
"""

from __future__ import annotations

from tippo_rl.rewards import RepetitionPenalty


__all__ = ["RepetitionPenalty", "repetition_penalty"]

repetition_penalty = RepetitionPenalty()  # trigrams, penalty in [−1, 0]
