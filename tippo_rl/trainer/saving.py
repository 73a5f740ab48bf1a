"""What a TIPPo trainer saves and resumes from: atomic checkpoints and final saves, a loadable model (LoRA merged),
the model card, and resuming checks."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
from pathlib import Path

from accelerate.utils import is_peft_model
from torch import nn
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint, rotate_checkpoints

from ..checkpoints import (
    TRAINER_STATE_NAME,
    CheckpointError,
    check_checkpoint,
    folder_size,
    publish_files,
    publish_folder,
    redacted,
    reporting_disk_full,
    resolve_checkpoint,
    staging_folder,
)
from ..model_card import build_model_card


logger = logging.getLogger(__name__)


class TIPPoSavingMixin:
    """What a TIPPo trainer saves and resumes from.

    The run's `output_dir` always receives a model that `TIPPoForConditionalGeneration.from_pretrained` loads — a LoRA run saves the merged
    model there (what the next stage and inference load) and the adapter alone in `output_dir/adapter` — plus the
    processor and a TIPPo model card. Checkpoints keep the Trainer's format.

    Every save is atomic (`tippo_rl.checkpoints`): a checkpoint is written into `_incomplete-checkpoint-N/` and renamed
    when complete, the final save is staged and moved in weights last. A save that fills the disk removes its staging
    folder and stops the run with `DiskFullError` (one line: the path, the space needed). No saved file holds a token.
    `train()` accepts `resume_from_checkpoint="last"`, reads the checkpoint once before resuming (a damaged file is
    named), says when the run's length changed, and trains nothing from a checkpoint that already reached the end.

    A trainer sets `_stage` (for the model card) and may override `_policy` (the model to save inside its wrapper),
    `_save_checkpoint_extras` (more files for a checkpoint), `_check_resume` (its own state in a checkpoint, checked
    before anything loads) and `_restore_state` (that state restored, before the Trainer resumes).
    """

    _stage = "training"
    _checkpoint_staging_root: Path | None = None

    def _policy(self, model: nn.Module) -> nn.Module:
        return model

    # -- resuming -------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            state = check_checkpoint(checkpoint)
            self._check_resume(checkpoint, state)
            if self._reached_the_end(state):
                return self._finish_from_checkpoint(checkpoint)
            self._restore_state(checkpoint)
        return super().train(
            resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
        )

    def _check_resume(self, checkpoint: str, state: dict) -> None:
        """Say when this run's length differs from the checkpoint's (its schedules then change from here on)."""
        if self.args.max_steps > 0 and state.get("max_steps") not in (None, self.args.max_steps):
            warnings.warn(
                f"resuming '{checkpoint}' (step {state['global_step']} of a run of max_steps {state['max_steps']}) with "
                f"max_steps {self.args.max_steps} (set directly or by total_iterations): the learning-rate schedule and every schedule over the run (λ1 = m/M, "
                "γ^m) change from here, so the result differs from either run done uninterrupted",
                UserWarning,
                stacklevel=3,
            )

    def _restore_state(self, checkpoint: str) -> None:
        """Restore a trainer's own state (beyond the Trainer's) from the checkpoint about to be resumed."""

    def _reached_the_end(self, state: dict) -> bool:
        if self.args.max_steps > 0:
            return state["global_step"] >= self.args.max_steps
        return float(state.get("epoch") or 0) >= self.args.num_train_epochs

    def _finish_from_checkpoint(self, checkpoint: str) -> TrainOutput:
        """A checkpoint of the run's last step: load its weights and state, train nothing (the Trainer would run one more
        step past the end)."""
        if self.is_deepspeed_enabled:
            raise CheckpointError(
                f"'{checkpoint}' already reached the end of this run (max_steps {self.args.max_steps}); its model is "
                "complete: load it with TIPPoForConditionalGeneration.from_pretrained, or resume with a larger --max_steps"
            )
        logger.warning(
            "'%s' already reached the end of this run: nothing left to train; its weights are kept as they are",
            checkpoint,
        )
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        return TrainOutput(self.state.global_step, float("nan"), {})

    # -- saving ---------------------------------------------------------------------------------------------------

    def _get_output_dir(self, trial):
        # While a checkpoint is saved, the Trainer writes `<this>/checkpoint-N`: the staging folder.
        if self._checkpoint_staging_root is not None:
            return str(self._checkpoint_staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        root = staging_folder(final)
        if self.args.should_save:
            shutil.rmtree(root, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        previous = get_last_checkpoint(run_dir) if run_dir.is_dir() else None  # about the size this one will be
        with reporting_disk_full(final, root, folder_size(previous) if previous else None):
            self._checkpoint_staging_root = root
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._checkpoint_staging_root = None
            self.accelerator.wait_for_everyone()  # every rank has written its part (RNG states, DeepSpeed shards)
            if not self.args.should_save:
                return
            staged = root / final.name
            if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint).parent == root:
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            self._save_checkpoint_extras(staged)
        publish_folder(staged, final)
        root.rmdir()
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )

    def _save_checkpoint_extras(self, folder: Path) -> None:
        """Write a trainer's own state into a checkpoint folder before it is published (main process only)."""

    def _save(self, output_dir: str | None = None, state_dict=None):
        # The Trainer pickles its arguments into training_args.bin: without the Hub token.
        args = self.args
        self.args = redacted(args)
        try:
            return super()._save(output_dir, state_dict)
        finally:
            self.args = args

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        output_dir = output_dir or self.args.output_dir
        if self._checkpoint_staging_root is not None:  # a checkpoint: already inside its staging folder
            return super().save_model(output_dir, _internal_call)
        staging = staging_folder(Path(output_dir) / "save")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        policy = self._policy(self.accelerator.unwrap_model(self.model))
        weights = sum(tensor.numel() * tensor.element_size() for tensor in policy.state_dict().values())
        with reporting_disk_full(output_dir, staging, weights):
            if is_peft_model(policy) and Path(output_dir).resolve() == Path(self.args.output_dir).resolve():
                if self.args.should_save:
                    policy.save_pretrained(staging / "adapter")
                    self._record_adapter_base(policy, staging / "adapter", Path(output_dir) / "adapter")
                    copy.deepcopy(policy).merge_and_unload().save_pretrained(staging)
                    self.processor.save_pretrained(staging)
            else:
                super().save_model(str(staging), _internal_call=True)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_files(staging, Path(output_dir))
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:  # as the Trainer does when save_model is called by the user
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def save_state(self):
        with reporting_disk_full(Path(self.args.output_dir) / TRAINER_STATE_NAME):
            return super().save_state()

    def _record_adapter_base(self, policy, staged_adapter: Path, final_adapter: Path) -> None:
        """Make `adapter_config.json`'s `base_model_name_or_path` name a model the adapter loads onto (with
        `PeftModel.from_pretrained(TIPPoForConditionalGeneration.from_pretrained(base), adapter)`): the hub id or absolute folder the run
        started from, or — for a model built from a preset, which exists nowhere else — its starting weights, saved with
        its processor in `adapter/base/`."""
        base = policy.get_base_model()
        name = getattr(base, "name_or_path", "") or ""
        if name and Path(name).is_dir():
            name = str(Path(name).resolve())
        if not name:
            # The starting weights: LoRA's frozen base layers and the original copies of the fully trained modules.
            state = {
                key.replace(".base_layer.", ".").replace(".original_module.", "."): value
                for key, value in base.state_dict().items()
                if "lora_" not in key and ".modules_to_save." not in key
            }
            start = type(base)(base.config)
            start.load_state_dict(state, strict=True)
            start.save_pretrained(staged_adapter / "base")
            self.processor.save_pretrained(staged_adapter / "base")
            name = str((final_adapter / "base").resolve())
        config_file = staged_adapter / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = name
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))

    card_arguments: dict = {}

    def set_card_arguments(self, dataset_name: str | None = None, script_args=None, model_args=None) -> None:
        """What the model card says about the run beyond the training arguments: the dataset's name (a hub id becomes
        the card's `datasets`) and the recipe's data and model arguments."""
        self.card_arguments = {"dataset_name": dataset_name, "script_args": script_args, "model_args": model_args}

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Write a TIPPo model card (README.md) to `output_dir`: start, base models, datasets, tags, a quick start,
        the arguments that differ from their defaults, final metrics."""
        if not self.is_world_process_zero():
            return
        model_name = model_name or Path(self.args.output_dir).name
        tags = [tags] if isinstance(tags, str) else list(tags or ())
        arguments = {**self.card_arguments}
        arguments["dataset_name"] = dataset_name or arguments.get("dataset_name")
        card = build_model_card(self, self._stage, model_name, tags=tags, **arguments)
        with reporting_disk_full(Path(self.args.output_dir) / "README.md"):
            card.save(Path(self.args.output_dir) / "README.md")
