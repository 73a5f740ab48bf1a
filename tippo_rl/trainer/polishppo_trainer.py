"""PolishPPO (`shared/method/TIPPo.md`, "PolishPPO"): PPO whose return and advantage are

    G_m = γ^m·R_literal + γ^(M−m)·R_semantic          (paper, text under Eq. 6; R_literal Eq. 7, R_semantic Eq. 8)
    Â   = (G_m − μ_m) / (δ_m + ε)                      (Eq. 6)

with μ_m, δ_m the mean and standard deviation of the returns of the last W iterations. Everything else — rollouts,
the clipped surrogate, the KL penalty to the SFT policy — is [`PPOTrainer`]'s: this trainer overrides only
`compute_returns` and `compute_advantages`.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback

from ..modeling_tippo import TIPPoModel
from ..processing_tippo import TIPPoProcessor
from ..rewards import load_reward
from .polishppo_config import PolishPPOConfig
from .ppo_trainer import PPOTrainer

LITERAL, SEMANTIC = "literal", "semantic"


def _merge(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Combine (count, mean, sum of squared deviations) of two sets of numbers (Chan et al.'s parallel update)."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


class ReturnStatistics:
    """μ_m and δ_m of Eq. 6: mean and (population) standard deviation of the returns of the last `window` iterations,
    or of all iterations so far when `window` is None (paper-literal).

    Each iteration is kept as (count, mean, M2) in float64 and windows are merged exactly, so the statistics neither
    drift nor lose precision over a 20K-iteration run.
    """

    def __init__(self, window: int | None = None):
        self.window = window
        self.iterations: deque[tuple[int, float, float]] = deque(maxlen=window)  # used when window is set
        self.total: tuple[int, float, float] = (0, 0.0, 0.0)  # used when window is None

    def update(self, returns: torch.Tensor) -> None:
        """Add one iteration's returns `(n,)` (all processes' returns, so every process holds the same statistics)."""
        values = returns.detach().double().flatten()
        mean = values.mean().item()
        stats = (len(values), mean, ((values - mean) ** 2).sum().item())
        if self.window is None:
            self.total = _merge(self.total, stats)
        else:
            self.iterations.append(stats)

    def _merged(self) -> tuple[int, float, float]:
        if self.window is None:
            return self.total
        merged = (0, 0.0, 0.0)
        for stats in self.iterations:
            merged = _merge(merged, stats)
        return merged

    @property
    def mean(self) -> float:
        return self._merged()[1]

    @property
    def std(self) -> float:
        count, _, m2 = self._merged()
        return math.sqrt(max(m2, 0.0) / count) if count else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "iterations": [list(s) for s in self.iterations], "total": list(self.total)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["window"] != self.window:
            raise ValueError(
                f"the checkpoint's advantage_window is {state['window']}, this run's is {self.window}: the running "
                "statistics of Eq. 6 cannot be carried over; resume with the same advantage_window"
            )
        self.iterations = deque((tuple(s) for s in state["iterations"]), maxlen=self.window)
        self.total = tuple(state["total"])


class PolishPPOTrainer(PPOTrainer):
    """PolishPPO: PPO on G_m (literal and semantic rewards, γ-scheduled over the run) with the running normalisation
    of Eq. 6 as the baseline — no critic. The KL penalty keeps the policy near the SFT model.

    Args:
        model: the SFT model (`TIPPoModel`, or PEFT-wrapped).
        args: [`PolishPPOConfig`].
        processor: the model's processor.
        train_dataset: a TIPPo dataset; its `reference` column is Y of Eq. 7–8.
        reward_funcs: default: `args.reward_funcs` (`literal` and `semantic` built with `args.semantic_model`, plus any
            extra plug-ins). Whatever is given must contain rewards named `literal` and `semantic`.
    """

    _tag_names = ["trl", "ppo", "polishppo", "tippo", "multimodal"]
    _stage = "PolishPPO"

    def __init__(
        self,
        model: TIPPoModel,
        args: PolishPPOConfig,
        processor: TIPPoProcessor,
        train_dataset: Dataset,
        reward_funcs: Sequence[Callable | str] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
    ):
        if reward_funcs is None:
            init_kwargs = args.reward_init_kwargs or {}
            semantic = {
                "model_name_or_path": args.semantic_model,
                "pooling": args.semantic_pooling,
                "dtype": args.semantic_dtype,
                "backend": args.semantic_backend,
                **init_kwargs.get(SEMANTIC, {}),
            }
            reward_funcs = [
                load_reward(spec, **(semantic if spec == SEMANTIC else init_kwargs.get(spec, {}))) for spec in args.reward_funcs
            ]
        super().__init__(model, args, processor, train_dataset, reward_funcs, callbacks, optimizers)
        for name in (LITERAL, SEMANTIC):
            if self.reward_names.count(name) != 1:
                raise ValueError(
                    f"PolishPPO needs exactly one reward named {name!r} (G_m weights R_literal and R_semantic); "
                    f"got rewards {self.reward_names}"
                )
        self.literal_index = self.reward_names.index(LITERAL)
        self.semantic_index = self.reward_names.index(SEMANTIC)
        self.extra_indices = [i for i in range(len(self.reward_names)) if i not in (self.literal_index, self.semantic_index)]
        self.return_statistics = ReturnStatistics(args.advantage_window)
        self._schedule_checked = False

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
            raise ValueError("the literal or semantic reward returned None for a sample; G_m needs both for every sample")
        self._metrics["polish/m"].append(float(self.iteration))
        self._metrics["polish/w_literal"].append(w_literal)
        self._metrics["polish/w_semantic"].append(w_semantic)
        return G

    def compute_advantages(self, returns: torch.Tensor, rollouts: dict[str, Any]) -> torch.Tensor:
        """Â of Eq. 6 for every completion token `(batch, T)`, normalised by the returns of the last W iterations."""
        all_returns = self.accelerator.gather(returns)
        self.return_statistics.update(all_returns)  # the last W iterations, the current one included
        mu, delta = self.return_statistics.mean, self.return_statistics.std  # μ_m, δ_m
        advantages = (returns - mu) / (delta + self.args.advantage_epsilon)  # Eq. 6
        all_advantages = (all_returns - mu) / (delta + self.args.advantage_epsilon)
        self._metrics["polish/G_mean"].append(all_returns.mean().item())
        self._metrics["polish/G_std"].append(all_returns.std(correction=0).item())
        self._metrics["polish/mu"].append(mu)
        self._metrics["polish/delta"].append(delta)
        self._metrics["polish/advantage_mean"].append(all_advantages.mean().item())
        self._metrics["polish/advantage_std"].append(all_advantages.std(correction=0).item())
        return advantages[:, None] * rollouts["completion_mask"]  # Â is the advantage of every token of y

    def _check_schedule(self) -> None:
        """Warn once when the `paper` schedule leaves G_m ≈ 0 for much of the run (method page: known flaw)."""
        if self._schedule_checked or self.args.gamma_schedule != "paper":
            return
        self._schedule_checked = True
        M, gamma = self.total_iterations, self.args.polish_gamma
        if gamma == 1:
            return
        live = math.ceil(math.log(1e-6) / math.log(gamma))  # iterations before γ^m falls below 1e-6
        dead = max(M - 2 * live, 0)
        if dead > 0.1 * M:
            warnings.warn(
                f"gamma_schedule 'paper' with M = {M} iterations and γ = {gamma}: γ^m and γ^(M−m) are both below 1e-6 for "
                f"{dead} iterations ({dead / M:.0%} of the run), so G_m ≈ 0 and Â ≈ 0 there and only the KL penalty "
                "acts. Use gamma_schedule 'progress' for the same shape over any run length (polish/w_literal and "
                "polish/w_semantic are logged).",
                stacklevel=2,
            )

    def ppo_state(self) -> dict[str, Any]:
        return {**super().ppo_state(), "return_statistics": self.return_statistics.state_dict()}

    def load_ppo_state(self, state: dict[str, Any]) -> None:
        super().load_ppo_state(state)
        self.return_statistics.load_state_dict(state["return_statistics"])
