"""The PPO equations, one line per equation: the clipped surrogate and value losses, the KL penalty, GAE, the sequence
advantages of the critic-free baselines (group, leave-one-out, greedy, and the running statistics of Eq. 6), and the
completion mask they are averaged over. Tensors are `(batch, T)` over completion tokens unless said otherwise.

Equation numbers marked "PPO" refer to Schulman et al. 2017 (arXiv:1707.06347); k3 is the KL estimator of
http://joschu.net/blog/kl-approx.html; the value clipping is OpenAI baselines' (as in TRL's former PPOTrainer); "Eq. 6"
is PolishPPO's running normalisation (shared/method/TIPPo.md).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from trl.trainer.utils import selective_log_softmax


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1 (0 when the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


# Logits per chunk in `token_log_probs` (4 MB of fp32: a chunk's temporaries stay in the CPU's cache).
CHUNK_ELEMENTS = 1 << 20


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) `(batch, T)` from fp32/fp64 logits `(batch, T, V)` at `temperature`: x_token − logsumexp(x), over
    chunks of positions of at most `CHUNK_ELEMENTS` logits. TRL's `selective_log_softmax` goes one batch row at a
    time: 1.2–1.4 ms for 32 × 48 × 512 logits on this CPU where chunks take 0.9, and no faster at T5's vocabulary
    (22 vs 20 ms for 8 × 64 × 32128). On a GPU TRL's fused kernel is used."""
    if logits.is_cuda:
        return selective_log_softmax(logits, token_ids, temperature=temperature)
    if temperature != 1.0:
        logits = logits / temperature
    flat_logits, flat_ids = logits.reshape(-1, logits.shape[-1]), token_ids.reshape(-1)
    rows = max(1, CHUNK_ELEMENTS // max(logits.shape[-1], 1))
    return torch.cat(
        [
            chunk.gather(-1, ids[:, None]).squeeze(-1) - chunk.logsumexp(-1)
            for chunk, ids in zip(flat_logits.split(rows), flat_ids.split(rows))
        ]
    ).view(token_ids.shape)


def masked_global_mean_std(values: torch.Tensor, mask: torch.Tensor, accelerator) -> tuple[float, float]:
    """Mean and (population) standard deviation of `values` `(batch, T)` over the positions where `mask` is 1, on all
    processes (one all-reduce of the three sums)."""
    stats = torch.stack([(values * mask).sum(), (values**2 * mask).sum(), mask.sum().to(values.dtype)])
    total, squares, count = accelerator.reduce(stats, reduction="sum").double().tolist()
    mean = total / max(count, 1)
    return mean, math.sqrt(max(squares / max(count, 1) - mean**2, 0.0))


def clipped_surrogate_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
    loss_type: str = "bnpo",
    **aggregation,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss per token, aggregated over the completion tokens as `loss_type` says
    (`aggregate_token_losses`).

    Args:
        logps, old_logps, advantages, mask: `(batch, T)`; `mask` is 1 on completion tokens.
        cliprange: ε; cliprange_high: the upper ε (DAPO's clip-higher), None for ε.
        loss_type, aggregation: see `aggregate_token_losses`.
    Returns:
        (loss, clip fraction, ratio), the first two scalars, ratio `(batch, T)`.
    """
    ratio = torch.exp(logps - old_logps)  # r_t(θ) = π_θ(y_t) / π_θ_old(y_t)
    high = cliprange if cliprange_high is None else cliprange_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + high)
    losses = torch.max(unclipped, clipped)  # −L^CLIP, PPO Eq. 7
    loss = aggregate_token_losses(losses, mask, loss_type, **aggregation)
    return loss, masked_mean((clipped > unclipped).float(), mask), ratio


def aggregate_token_losses(
    losses: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "bnpo",
    max_completion_length: int | None = None,
    tokens_per_minibatch: float | None = None,
) -> torch.Tensor:
    """A minibatch's loss from per-token losses `(batch, T)`, as TRL's GRPO `loss_type` values define it:

    - `bnpo`: Σ_{i,t} m·ℓ / Σ_{i,t} m, the mean over the minibatch's completion tokens.
    - `grpo`: (1/B) Σ_i (Σ_t m·ℓ / Σ_t m), each completion's mean, then their mean (a short completion's tokens weigh
      more).
    - `dr_grpo`: Σ_{i,t} m·ℓ / (B · `max_completion_length`), a constant denominator (Dr. GRPO).
    - `dapo`: Σ_{i,t} m·ℓ / `tokens_per_minibatch`, the mean number of completion tokens per minibatch over the whole
      rollout batch and every process: each token of an optimizer step weighs the same, whichever minibatch or process
      holds it (DAPO; TRL's default).
    """
    mask = mask.to(losses.dtype)
    if loss_type == "bnpo":
        return (losses * mask).sum() / mask.sum().clamp(min=1)
    if loss_type == "grpo":
        return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        return (losses * mask).sum() / (losses.shape[0] * max_completion_length)
    if loss_type == "dapo":
        return (losses * mask).sum() / max(tokens_per_minibatch, 1.0)
    raise ValueError(f"loss_type must be bnpo, grpo, dr_grpo or dapo; got {loss_type!r}")


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled tokens' log-probs, `(batch, T)`."""
    log_ratio = ref_logps - logps  # log π_ref − log π_θ
    if estimator == "k1":
        return -log_ratio  # k1
    return torch.exp(log_ratio) - log_ratio - 1  # k3


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss ½·max((V − R)², (V_clip − R)²), averaged over completion tokens; and its clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (values - targets) ** 2, (clipped_values - targets) ** 2
    losses = 0.5 * torch.max(unclipped_error, clipped_error)
    return masked_mean(losses, mask), masked_mean((clipped_error > unclipped_error).float(), mask)


def generalized_advantage_estimation(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE over the tokens of each completion. `rewards`, `values`, `mask`: `(batch, T)`; the mask is a prefix (the
    completion, EOS included). The value after the last token is 0 (the episode ends). Returns `(batch, T)`."""
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γ·V(s_{t+1}) − V(s_t), PPO Eq. 12
        running = delta + gamma * lam * running  # Â_t = δ_t + γλ·Â_{t+1}, PPO Eq. 11 (recursive form)
        advantages[:, t] = running
    return advantages * mask


def group_advantages(returns: torch.Tensor, k: int, epsilon: float = 1e-8, scale: bool = True) -> torch.Tensor:
    """GRPO's per-prompt normalisation. `returns` `(batch,)` holds k consecutive completions per prompt; the std is
    the unbiased one over the prompt's k returns (as TRL's GRPOTrainer); `scale=False` keeps the difference from the
    group mean alone (Dr. GRPO, TRL's `scale_rewards: none`). Returns `(batch,)`."""
    G = returns.view(-1, k)  # (prompts, k)
    centred = G - G.mean(1, keepdim=True)  # G_ij − mean_i
    if not scale:
        return centred.flatten()
    return (centred / (G.std(1, keepdim=True) + epsilon)).flatten()  # Â_ij = (G_ij − mean_i) / (std_i + ε)


def leave_one_out_advantages(returns: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): the baseline of each completion is the mean return of the other
    k − 1 completions of its prompt. `returns` `(batch,)`, k consecutive per prompt. Returns `(batch,)`."""
    G = returns.view(-1, k)
    baseline = (G.sum(1, keepdim=True) - G) / (k - 1)  # b_ij = Σ_{l≠j} G_il / (k − 1)
    return (G - baseline).flatten()  # Â_ij = G_ij − b_ij


def greedy_baseline_advantages(returns: torch.Tensor, greedy_returns: torch.Tensor, k: int) -> torch.Tensor:
    """SCST (Rennie et al. 2017): the baseline is the return of the policy's greedy decode of the same prompt.
    `returns` `(batch,)` (k consecutive per prompt), `greedy_returns` `(batch / k,)`. Returns `(batch,)`."""
    return returns - greedy_returns.repeat_interleave(k)  # Â_ij = G(y_ij) − G(ŷ_i)


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


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first EOS (all tokens if it has none): `(batch, T)`."""
    is_eos = completion_ids == eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.shape[1])
    return (torch.arange(completion_ids.shape[1], device=completion_ids.device)[None] <= first_eos[:, None]).long()
