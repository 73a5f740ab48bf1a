"""What a PPO checkpoint holds beyond the Trainer's: `ppo_state.json` (the iteration, the step, the running return
statistics and the iteration layout it was written with) and, with a value head, `value_head.safetensors` beside the
policy; and the checks made before resuming from one."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers.trainer import TRAINING_ARGS_NAME

from ..checkpoints import PPO_STATE_NAME, CheckpointError, read_ppo_state, redacted
from .value_head import PolicyAndValueModel


class PPOCheckpointMixin:
    """Saving and resuming of [`PPOTrainer`], on top of `TIPPoSavingMixin`'s atomic checkpoints."""

    def ppo_state(self) -> dict[str, Any]:
        """What a checkpoint must hold beyond the Trainer's own state to resume exactly (JSON-serialisable), and the
        iteration layout it was written with."""
        return {
            "step": self._step,
            "iteration": self.iteration,
            "steps_per_generation": self.args.steps_per_generation,
            "num_ppo_epochs": self.args.num_ppo_epochs,
            "num_generations": self.args.num_generations,
            "total_iterations": self.total_iterations,
            "return_statistics": self.return_statistics.state_dict(),
        }

    def load_ppo_state(self, state: dict[str, Any]) -> None:
        """Restore what `ppo_state` saved."""
        self._step = state["step"]
        self.iteration = state["iteration"]
        # Absent in checkpoints of runs without the running baseline written before it existed.
        if "return_statistics" in state:
            self.return_statistics.load_state_dict(state["return_statistics"])

    def _save_checkpoint(self, model, trial):
        self.create_model_card()
        super()._save_checkpoint(model, trial)  # atomic; ppo_state.json goes in through _save_checkpoint_extras

    def _save_checkpoint_extras(self, folder):
        with open(os.path.join(folder, PPO_STATE_NAME), "w") as f:
            json.dump(self.ppo_state(), f, indent=2)

    def _check_resume(self, checkpoint: str, state: dict) -> None:
        ppo_state = read_ppo_state(checkpoint)
        for name in ("steps_per_generation", "num_ppo_epochs"):
            if ppo_state.get(name) not in (None, getattr(self.args, name)):
                raise CheckpointError(
                    f"'{checkpoint}' was written with {name} {ppo_state[name]}, this run has {getattr(self.args, name)}: "
                    f"its steps no longer fall on PPO iterations; resume with --{name} {ppo_state[name]}"
                )
        super()._check_resume(checkpoint, state)

    def _restore_state(self, checkpoint: str) -> None:
        self.load_ppo_state(read_ppo_state(checkpoint))
        self._rollout_batch = self._minibatches = None

    def _save(self, output_dir: str | None = None, state_dict=None):
        """With a value head, what the Trainer saves of a model, through the wrapper's own `save_pretrained` (the policy
        as a loadable TIPPo model or PEFT adapter, and `value_head.safetensors`), then the processor and the training
        arguments (without the Hub token)."""
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.model.save_pretrained(output_dir, state_dict=state_dict)  # DeepSpeed: its consolidated state dict
        self.processor.save_pretrained(output_dir)
        torch.save(redacted(self.args), os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_best_model(self):
        # `load_best_model_at_end` with a value head: the Trainer would load the policy's weights into the wrapper.
        if not isinstance(self.model, PolicyAndValueModel) or self.is_deepspeed_enabled:  # DeepSpeed: the engine's own
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        if not isinstance(self.model, PolicyAndValueModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.model.load_value_head(resume_from_checkpoint)
        # The Trainer loads the policy as the plain model (or adapter) it saved.
        super()._load_from_checkpoint(resume_from_checkpoint, self.model.policy)
