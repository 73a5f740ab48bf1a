"""The two forms a completion takes on its way to a reward, and the conversions between them.

A reward receives each completion either as its text, or, with ``reward_completions_format: conversational``, in
TRL's conversational form: one assistant message, ``[{"role": "assistant", "content": text}]`` (what
``trl.rewards.think_format_reward`` reads). ``conversational_completions`` makes the second from the first;
``completion_text`` reads the text back from either, for rewards that score texts (Eq. 7 and 8, the plug-ins in
``rewards/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form ``[{"role": ..., "content": str}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1]["content"]
    raise TypeError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}: {completion!r:.80}"
    )


def conversational_completions(texts: Sequence[str]) -> list[list[dict[str, str]]]:
    """Completions in TRL's conversational form, one assistant message each: ``[{"role": "assistant", "content": text}]``
    per text, length batch."""
    return [[{"role": "assistant", "content": text}] for text in texts]
