"""PolishPPO's rewards (Eq. 7 and Eq. 8) and the reward plug-in mechanism.

* ``completions``: a completion as a reward receives it, a string or TRL's conversational form, and the
  conversions between the two (``completion_text``, ``conversational_completions``);
* ``polish_rewards``: the paper's rewards, Eq. 7 ``literal_reward`` / ``literal`` / ``LiteralReward`` and Eq. 8
  ``SemanticReward``, plus ``RepetitionPenalty``; each a plain scorer and a plug-in;
* ``cider``: CIDEr-D as a reward (``CIDErDReward``, built-in ``cider``), SCST's reward in the captioning literature;
* ``static_embedder``: Eq. 8's static backend, a sentence encoder distilled once into a cached Model2Vec table, and
  ``bundled_minilm_path``;
* ``reward_loading``: plug-ins, any callable ``f(prompts, completions, **columns) -> list[float | None]`` called as
  TRL's ``GRPOTrainer`` calls a reward function; ``load_reward`` resolves a spec (``literal``, ``semantic``,
  ``package.module:function``, ``trl.rewards.think_format_reward``, ``path/to/file.py:function``) into one and
  ``score_rewards`` calls a list of them on a batch.

In tippo_rl datasets the reference text (Y in the paper) is the column ``reference``.
"""

from .cider import CIDErDReward
from .completions import completion_text, conversational_completions
from .polish_rewards import (
    EMBEDDER_DTYPES,
    SEMANTIC_BACKENDS,
    LiteralReward,
    RepetitionPenalty,
    SemanticReward,
    literal,
    literal_reward,
)
from .reward_loading import (
    BUILTIN_REWARDS,
    RewardError,
    check_reward_spec,
    is_async_reward,
    is_reward_factory,
    load_reward,
    reward_name,
    score_rewards,
)
from .static_embedder import bundled_minilm_path, static_sentence_embedder


__all__ = [
    "BUILTIN_REWARDS",
    "CIDErDReward",
    "EMBEDDER_DTYPES",
    "SEMANTIC_BACKENDS",
    "LiteralReward",
    "RepetitionPenalty",
    "SemanticReward",
    "RewardError",
    "bundled_minilm_path",
    "completion_text",
    "conversational_completions",
    "static_sentence_embedder",
    "literal",
    "literal_reward",
    "check_reward_spec",
    "is_async_reward",
    "is_reward_factory",
    "load_reward",
    "reward_name",
    "score_rewards",
]
