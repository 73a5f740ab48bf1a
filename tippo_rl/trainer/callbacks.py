"""Callbacks of the TIPPo trainers."""

from __future__ import annotations

import math

from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging as hf_logging


class IterationProgressCallback(ProgressCallback):
    """The training progress bar in PPO iterations (a rollout batch and its PPO epochs), not in optimizer steps, which
    are `num_ppo_epochs · steps_per_generation / gradient_accumulation_steps` times as many."""

    def __init__(self, steps_per_iteration: float):
        super().__init__()
        self.steps_per_iteration = steps_per_iteration

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            total = max(math.ceil(state.max_steps / self.steps_per_iteration), 1)
            self.training_bar = hf_logging.tqdm(total=total, unit="iteration", desc="PPO", dynamic_ncols=True)
            self.training_bar.update(int(state.global_step // self.steps_per_iteration))  # resumed: iterations done
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            done = min(int(state.global_step // self.steps_per_iteration), self.training_bar.total)
            self.training_bar.update(done - self.training_bar.n)
