"""Example reward plug-in: penalise completions whose length (in characters) differs from a target length.

The penalty is ``-|len(y) - L| / max(len(y), L, 1)``, in [-1, 0]: 0 when the length is right, -1 for an empty
completion (or an empty target with a non-empty completion), -0.5 for a completion twice or half as long as the
target. It is a penalty (never positive) so that adding it to the literal and semantic rewards can only subtract
for a wrong length, never pay for length alone. Characters, not tokens, so Chinese and English are measured the
same way and no tokenizer is needed.

The target length L, first found of:
  1. the dataset column ``target_length`` (one int per sample),
  2. the constructor argument of :class:`LengthPenalty` (``--reward_funcs rewards/length_penalty.py:LengthPenalty``
     with ``target_length`` among its init kwargs),
  3. the length of the dataset column ``reference``.

Use it as ``rewards/length_penalty.py:length_penalty`` (any directory) or ``rewards.length_penalty:length_penalty``
(from the repository root).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tippo_rl.rewards import completion_text


def length_penalty(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[str] | None = None,
    target_length: Sequence[int] | None = None,
    **kwargs,
) -> list[float]:
    """Relative length deviation of each completion from its target, as a penalty in [-1, 0].

    Args:
        prompts: the batch's prompts (unused).
        completions: generated texts, length batch (strings, or TRL chat messages).
        reference: the dataset column ``reference``; its lengths are the targets unless ``target_length`` is given.
        target_length: optional dataset column, one target length in characters per sample.
        **kwargs: other columns and TRL's extras (``completion_ids``, ``trainer_state``, ...), unused.

    Returns:
        ``list[float]`` of length batch, each in [-1, 0].
    """
    if target_length is None:
        if reference is None:
            raise ValueError(
                "length_penalty needs a target: a 'target_length' or 'reference' column, "
                "or LengthPenalty(target_length=...)"
            )
        target_length = [len(text) for text in reference]
    texts = [completion_text(c) for c in completions]
    return [-abs(len(y) - target) / max(len(y), target, 1) for y, target in zip(texts, target_length, strict=True)]


class LengthPenalty:
    """:func:`length_penalty` with one fixed target length for every sample (the ``target_length`` column still wins).

    Args:
        target_length: target length in characters.
    """

    def __init__(self, target_length: int):
        if target_length < 0:
            raise ValueError(f"target_length must be >= 0, got {target_length}")
        self.target_length = target_length

    def __call__(self, prompts, completions, target_length=None, **kwargs) -> list[float]:
        if target_length is None:
            target_length = [self.target_length] * len(completions)
        return length_penalty(prompts, completions, target_length=target_length, **kwargs)
