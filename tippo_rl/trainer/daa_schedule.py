"""The λ1 schedule of DAA (Eq. 2), shared by the SFT and RL stages."""

from __future__ import annotations


def daa_lambda1_at(schedule: str, progress: float, held: float) -> float:
    """λ1 of Eq. 2 at a point of a training stage, the one progress hook both TIPPo trainers call.

    Args:
        schedule: `linear` (the paper: λ1 = m/M), else (`constant`, `hold`) the value `held`.
        progress: m/M, the share of the stage done (optimizer steps for SFT, PPO iterations for RL).
        held: the value of the `constant` / `hold` schedules.
    """
    if schedule == "linear":
        return min(max(progress, 0.0), 1.0)  # λ1 = m/M
    return held
