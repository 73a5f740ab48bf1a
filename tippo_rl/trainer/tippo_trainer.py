"""What every TIPPo trainer (SFT and PPO alike) adds to transformers' Trainer, in one place: its options
(`TIPPoTrainingArguments`, `GenerationEvalArguments`), evaluation by decoding (`GenerationEvalMixin`), saving
(`TIPPoSavingMixin`: staged checkpoints, the final model and its card), the setup both share (`TIPPoTrainerMixin`: the
processor, the datasets, the collator), λ1's schedule (`daa_lambda1_at`), per-step metrics (`StepMetrics`), PPO's
progress bar (`IterationProgressCallback`) and `unwrap_tippo`."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import math
import shutil
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from torch import nn
from transformers.trainer_callback import ProgressCallback, TrainerCallback, TrainerState
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    SaveStrategy,
    TrainOutput,
    get_last_checkpoint,
    rotate_checkpoints,
)
from transformers.utils import logging as hf_logging
from trl.models import unwrap_model_for_generation

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
from ..data_collator import TIPPoDataCollator
from ..evaluation import TOKENIZE_MODES, compute_metrics
from ..feature_cache import training_datasets
from ..generation import generate_kwargs, generate_predictions
from ..model_card import build_model_card
from ..modeling_tippo import TIPPoForConditionalGeneration
from ..options import check_choice, option, parse_json_option
from ..processing_tippo import TIPPoProcessor
from ..rewards import literal_reward, score_rewards


# -- the options every TIPPo trainer adds to TrainingArguments ---------------------------------------------------------


# TrainingArguments' numeric options and what each must be: (lowest, highest, lowest allowed, highest allowed).
TRAINING_ARGUMENT_RANGES = {
    "learning_rate": (0.0, math.inf, False, True),
    "weight_decay": (0.0, math.inf, True, True),
    "adam_beta1": (0.0, 1.0, True, False),
    "adam_beta2": (0.0, 1.0, True, False),
    "adam_epsilon": (0.0, math.inf, True, True),
    "max_grad_norm": (0.0, math.inf, True, True),
    "warmup_ratio": (0.0, 1.0, True, True),
    "per_device_train_batch_size": (1, math.inf, True, True),
    "per_device_eval_batch_size": (1, math.inf, True, True),
    "gradient_accumulation_steps": (1, math.inf, True, True),
    "num_train_epochs": (0.0, math.inf, False, True),
    "warmup_steps": (0, math.inf, True, True),
    "dataloader_num_workers": (0, math.inf, True, True),
    "save_total_limit": (0, math.inf, True, True),  # 0 or unset: no limit
}


def check_range(name: str, value, low, high, low_included: bool, high_included: bool) -> None:
    """Raise `ValueError` naming option `name` when `value` (None: unset, allowed) lies outside its range."""
    if value is None:
        return
    below = value < low if low_included else value <= low
    above = value > high if high_included else value >= high
    if below or above or (isinstance(value, float) and math.isnan(value)):
        left, right = "[" if low_included else "(", "]" if high_included else ")"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value}")


@dataclass
class TIPPoTrainingArguments:
    """Listed before `TrainingArguments` in a config's bases, so that its `bf16` default replaces theirs. A config's
    `__post_init__` calls `_resolve_tippo_fields()` before `TrainingArguments.__post_init__`."""

    use_feature_cache: bool = option(True, "Train from cached frozen-encoder features (computed once per dataset).")
    feature_cache_dir: str | None = option(
        None, "Folder for cached features (default $TIPPO_RL_CACHE/features, ~/.cache/tippo_rl/features)."
    )
    bf16: bool | None = option(None, "bf16 mixed precision. Default: on where a GPU supports it, off on a CPU.")

    def _resolve_tippo_fields(self) -> None:
        for name, bounds in TRAINING_ARGUMENT_RANGES.items():
            check_range(name, getattr(self, name, None), *bounds)
        check_tensorboard(getattr(self, "report_to", None))
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.use_cpu


def check_tensorboard(report_to) -> None:
    """`report_to` names tensorboard but it is not installed: one line naming the extra that installs it, where the
    Trainer would stop later with a traceback ("TensorBoardCallback requires tensorboard to be installed")."""
    backends = [report_to] if isinstance(report_to, str) else list(report_to or ())
    if "tensorboard" in backends and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "report_to tensorboard: the tensorboard package is not installed; pip install -e '.[tensorboard]' "
            "(or pip install tensorboard)"
        )


# -- evaluation by decoding (eval_rouge_l, eval_cider, eval_literal) ---------------------------------------------------


logger = logging.getLogger(__name__)


@dataclass
class GenerationEvalArguments:
    """Fields shared by [`TIPPoSFTConfig`] and [`PPOConfig`]: how evaluation during training decodes and scores."""

    eval_max_samples: int | None = option(
        64,
        "Decode at most this many eval rows at each evaluation during training (the first ones; None: all). Keeps evaluation cheap on a CPU. Not max_eval_samples, which keeps the first rows of the eval split for the whole run (the eval loss too); in recipes/evaluate.py, which has only that one, --eval_max_samples means max_eval_samples.",
    )
    eval_generation_kwargs: dict | str | None = option(
        None, '`generate()` options of the evaluation decode, e.g. {"num_beams": 4}. Default: greedy.'
    )
    eval_tokenize: str = option(
        "none",
        "What ROUGE-L and CIDEr see as words: `none` (whitespace), `char`, `jieba` or `ptb` (needs Java; what recipes/evaluate.py uses for the demo).",
    )
    eval_log_completions: int = option(
        4, "Sample completions shown at each evaluation (console, and a wandb table with report_to wandb); 0: none."
    )

    def _check_generation_eval_fields(self) -> None:
        self.eval_generation_kwargs = parse_json_option("eval_generation_kwargs", self.eval_generation_kwargs)
        if self.eval_max_samples is not None and self.eval_max_samples < 1:
            raise ValueError(f"eval_max_samples must be ≥ 1 or None (all rows), got {self.eval_max_samples}")
        check_choice("eval_tokenize", self.eval_tokenize, TOKENIZE_MODES)
        if self.eval_log_completions < 0:
            raise ValueError(f"eval_log_completions must be ≥ 0, got {self.eval_log_completions}")


class GenerationEvalMixin:
    """`generation_metrics()` for a Trainer with `args` ([`GenerationEvalArguments`]), `processor` and `accelerator`.
    A trainer with `reward_funcs` / `reward_names` (PPO) also scores the completions with its rewards."""

    default_eval_generation_kwargs: dict[str, Any] = {}

    def generation_metrics(self, dataset, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Decode `dataset` (its first `eval_max_samples` rows) and score it: `{prefix_rouge_l, prefix_cider,
        prefix_literal, prefix_rewards/<name>...}`. Every process decodes the same rows, so every process holds the
        same metrics (what best-checkpoint selection compares)."""
        args = self.args
        if args.eval_max_samples is not None and len(dataset) > args.eval_max_samples:
            dataset = dataset.select(range(args.eval_max_samples))
        kwargs = generate_kwargs(
            {**self.default_eval_generation_kwargs, **(args.eval_generation_kwargs or {})},
            do_sample=False,
            num_beams=1,
        )
        reward_funcs = getattr(self, "reward_funcs", None)
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            policy = self._policy(unwrapped)
            decode = dict(
                batch_size=args.per_device_eval_batch_size,
                progress=not args.disable_tqdm and self.accelerator.is_main_process,
            )
            predictions = generate_predictions(policy, self.processor, dataset, **decode, **kwargs)
            # A PPO trainer optimises its sampled rollouts while evaluation decodes greedily, and the two can move
            # apart: the rollout decode of the same rows is scored too (`<prefix>_sampled_rewards/<name>`).
            sampled = (
                generate_predictions(
                    policy, self.processor, dataset, **decode, generation_config=self.generation_config
                )
                if reward_funcs
                else None
            )
        ids, titles, references = dataset["id"], dataset["title"], dataset["reference"]
        completions = [predictions[row_id] for row_id in ids]
        all_references = dict(zip(ids, dataset["references"]))
        result = compute_metrics(
            predictions,
            all_references,
            metrics=["rouge_l", "cider"],
            tokenize=args.eval_tokenize,
            lang="en" if args.eval_tokenize == "ptb" else "zh",  # lang only rules out ptb for Chinese here
            issue_warnings=False,  # an empty completion scores 0, as it should
        )
        literal = literal_reward(completions, references)
        metrics = {
            f"{metric_key_prefix}_rouge_l": result.corpus["ROUGE-L"],
            f"{metric_key_prefix}_cider": result.corpus["CIDEr"],
            f"{metric_key_prefix}_literal": sum(literal) / len(literal),
        }
        rewards = {"literal": literal}
        extras: dict[str, list] = {}  # columns the rewards add with log_extra, shown in the completions table
        if reward_funcs:
            columns = {
                name: list(dataset[name])
                for name in dataset.column_names
                if name not in ("image_features", "title_features")
            }
            for key, texts in (("rewards", completions), ("sampled_rewards", [sampled[i] for i in ids])):
                scores, _ = score_rewards(
                    reward_funcs,
                    prompts=list(titles),
                    completions=self.reward_completions(texts),
                    columns=columns,
                    trainer_state=self.state,
                    log_metric=lambda name, value: None,
                    log_extra=extras.__setitem__ if key == "rewards" else lambda name, value: None,
                )
                for name, values in zip(self.reward_names, scores):
                    if key == "rewards":
                        rewards[name] = values.tolist()
                    metrics[f"{metric_key_prefix}_{key}/{name}"] = torch.nanmean(values).item()
        self.eval_completions = {
            "title": list(titles),
            "completion": completions,
            "reference": list(references),
            **rewards,
        }
        self.eval_extra_columns = [column for column in extras if column not in self.eval_completions]
        self.eval_completions.update({column: list(extras[column]) for column in self.eval_extra_columns})
        self._log_completions_table()
        return metrics

    def _log_completions_table(self) -> None:
        n = self.args.eval_log_completions
        if not n or not self.accelerator.is_main_process:
            return
        table = {key: values[:n] for key, values in self.eval_completions.items()}
        extra_columns = ["reference", *getattr(self, "eval_extra_columns", [])]
        rewards = {key: values for key, values in table.items() if key not in ("title", "completion", *extra_columns)}
        try:
            from trl.trainer.utils import print_prompt_completions_sample

            print_prompt_completions_sample(
                table["title"],
                table["completion"],
                rewards,
                None,
                self.state.global_step,
                extra={key: table[key] for key in extra_columns},
            )
        except ImportError:  # rich is missing: a plain log line per sample
            for row in zip(*table.values()):
                logger.info("eval sample: %s", dict(zip(table, row)))
        if "wandb" in (self.args.report_to or []):
            import wandb

            if wandb.run is not None:
                columns = ["step", *table]
                rows = [[self.state.global_step, *row] for row in zip(*table.values())]
                wandb.log({"eval_completions": wandb.Table(columns=columns, data=rows)})


# -- saving: staged checkpoints, the final model, the model card -------------------------------------------------------


logger = logging.getLogger(__name__)


@dataclass
class StagedCheckpoint:
    """A checkpoint being written: `final` (`<run>/checkpoint-N`), the staging `root` (`<run>/_incomplete-checkpoint-N`),
    the `folder` inside it that the Trainer writes, and about how many bytes it needs (the previous checkpoint's)."""

    final: Path
    root: Path
    folder: Path
    needed: int | None


class CheckpointStaging(TrainerCallback):
    """Every checkpoint atomic, through public hooks: at the last callback event before the Trainer writes
    `checkpoint-N` the trainer is pointed at its staging folder (`begin_checkpoint`), and `on_save` renames the finished
    folder into place (`publish_checkpoint`). The last event is `on_evaluate` when an evaluation comes first (with
    `save_strategy: best` the save then depends on it: a save that does not come is called off at the next event), else
    `on_log` when a log comes first, else the step's or epoch's end."""

    def __init__(self, trainer: TIPPoSavingMixin):
        self.trainer = trainer
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.call_off_checkpoint()
        self.training = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.call_off_checkpoint()

    def on_step_end(self, args, state, control, **kwargs):
        self._before_save(control, logs_next=control.should_log)

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer logs at an epoch's end unless this step's log was written already.
        logged = [entry["step"] for entry in state.log_history if "loss" in entry]
        self._before_save(control, logs_next=control.should_log and (not logged or logged[-1] < state.global_step))

    def on_log(self, args, state, control, **kwargs):
        self._before_save(control, logs_next=False)

    def on_evaluate(self, args, state, control, **kwargs):
        self.trainer.call_off_checkpoint()
        if self.training and (control.should_save or args.save_strategy == SaveStrategy.BEST):
            self.trainer.begin_checkpoint()

    def on_save(self, args, state, control, **kwargs):
        self.trainer.publish_checkpoint()

    def _before_save(self, control, logs_next: bool) -> None:
        self.trainer.call_off_checkpoint()
        if self.training and control.should_save and not control.should_evaluate and not logs_next:
            self.trainer.begin_checkpoint()


class TIPPoSavingMixin:
    """What a TIPPo trainer saves and resumes from.

    The run's `output_dir` always receives a model that `TIPPoForConditionalGeneration.from_pretrained` loads — a LoRA run saves the merged
    model there (what the next stage and inference load) and the adapter alone in `output_dir/adapter` — plus the
    processor and a TIPPo model card. Checkpoints keep the Trainer's format.

    Every save is atomic (`tippo_rl.checkpoints`): a checkpoint is written into `_incomplete-checkpoint-N/` (the
    `CheckpointStaging` callback points the Trainer there) and renamed when complete, the final save is staged and
    moved in weights last. A save that fills the disk removes its staging
    folder and stops the run with `DiskFullError` (one line: the path, the space needed). No saved file holds a token.
    `train()` accepts `resume_from_checkpoint="last"`, reads the checkpoint once before resuming (a damaged file is
    named), says when the run's length changed, and trains nothing from a checkpoint that already reached the end.

    A trainer sets `_stage` (for the model card) and `updates_card_with_checkpoints`, and may override `_policy` (the
    model to save inside its wrapper), `write_model_files` (how its model is written, checkpoint or final save),
    `_save_checkpoint_extras` (more files for a checkpoint), `_check_resume` (its own
    state in a checkpoint, checked before anything loads) and `_restore_state` (that state restored, before the Trainer
    resumes).
    """

    _stage = "training"
    # Whether each checkpoint first brings output_dir's model card up to date, as TRL's trainers do (SFT's base does it in
    # its own _save_checkpoint, where create_model_card does nothing while the Trainer writes into a staging folder).
    updates_card_with_checkpoints = True
    # While the Trainer is pointed at a checkpoint's staging folder: where it goes, the copy of args naming it, and the
    # run's own arguments.
    _staged_checkpoint: StagedCheckpoint | None = None
    _staging_args = _run_args = None

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
        if not any(isinstance(callback, CheckpointStaging) for callback in self.callback_handler.callbacks):
            self.add_callback(CheckpointStaging(self))  # last: it acts on the save flags the others have set
        with self._reporting_checkpoint_failures():
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

    def begin_checkpoint(self) -> None:
        """Point the Trainer at `<run>/_incomplete-checkpoint-N/` for the checkpoint it writes next (`CheckpointStaging`
        calls this at the last callback event before the Trainer's save): the Trainer reads `args.output_dir` for that
        alone before `save_model`, the first thing it writes, which puts the run's own arguments back (the rest of the
        save, training_args.bin among it, sees them). `publish_checkpoint` then moves the folder into place."""
        if self._staged_checkpoint is not None:
            return
        if self.updates_card_with_checkpoints:
            self.create_model_card()
        trial = getattr(self, "_trial", None)
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        root = staging_folder(final)
        if self.args.should_save:
            shutil.rmtree(root, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        previous = get_last_checkpoint(run_dir) if run_dir.is_dir() else None  # about the size this one will be
        self._run_args = self.args
        self._staging_args = copy.copy(self._run_args)
        self._staging_args.output_dir = str(root)
        self.args = self._staging_args
        # What the Trainer writes: root/checkpoint-N (root/run-<trial>/checkpoint-N in a hyperparameter search).
        staged = Path(self._get_output_dir(trial=trial)) / final.name
        self._staged_checkpoint = StagedCheckpoint(final, root, staged, folder_size(previous) if previous else None)

    def publish_checkpoint(self) -> None:
        """After the Trainer's save (`on_save`): add the trainer's own files and rename the staged folder to
        `checkpoint-N`, then rotate the run's checkpoints as the Trainer would."""
        staged = self._staged_checkpoint
        if staged is None:
            return
        self._end_staging()
        self.accelerator.wait_for_everyone()  # every rank has written its part (RNG states, DeepSpeed shards)
        if not self.args.should_save:
            return
        with reporting_disk_full(staged.final, staged.root, staged.needed):
            if (
                self.state.best_model_checkpoint
                and Path(self.state.best_model_checkpoint).parent == staged.folder.parent
            ):
                self.state.best_model_checkpoint = str(staged.final)
                self.state.save_to_json(str(staged.folder / TRAINER_STATE_NAME))
            self._save_checkpoint_extras(staged.folder)
        publish_folder(staged.folder, staged.final)
        for folder in dict.fromkeys((staged.folder.parent, staged.root)):
            folder.rmdir()
        rotate_checkpoints(
            output_dir=str(staged.final.parent),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )

    def call_off_checkpoint(self) -> None:
        """A checkpoint begun but not written (`save_strategy: best` without a new best): the run's arguments back, the
        empty staging folder gone."""
        staged = self._staged_checkpoint
        if staged is None:
            return
        self._end_staging()
        if self.args.should_save:
            shutil.rmtree(staged.root, ignore_errors=True)

    def _end_staging(self) -> None:
        if self._run_args is not None:
            self.args = self._run_args
        self._staged_checkpoint = self._staging_args = self._run_args = None

    @contextlib.contextmanager
    def _reporting_checkpoint_failures(self):
        """Around training: a checkpoint whose save fails leaves the run's arguments in place, and one that fills the
        disk removes its staging folder and becomes `DiskFullError` (the checkpoints before it stay whole)."""
        try:
            yield
        except BaseException:
            staged = self._staged_checkpoint
            self._end_staging()
            if staged is None:
                raise
            with reporting_disk_full(staged.final, staged.root, staged.needed):
                raise

    def _save_checkpoint_extras(self, folder: Path) -> None:
        """Write a trainer's own state into a checkpoint folder before it is published (main process only)."""

    @contextlib.contextmanager
    def _arguments_without_tokens(self):
        """`self.args` without the Hub token (`checkpoints.redacted`) while the Trainer saves a model: it pickles its
        arguments into training_args.bin."""
        args = self.args
        self.args = redacted(args)
        try:
            yield
        finally:
            self.args = args

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        output_dir = output_dir or self.args.output_dir
        if self._staged_checkpoint is not None:  # a checkpoint: already inside its staging folder
            if self.args is self._staging_args:  # the Trainer has its checkpoint's folder: the run's arguments again
                self.args = self._run_args
            with self._arguments_without_tokens():
                return self.write_model_files(output_dir, _internal_call)
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
                with self._arguments_without_tokens():
                    self.write_model_files(str(staging), _internal_call=True)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_files(staging, Path(output_dir))
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:  # as the Trainer does when save_model is called by the user
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def write_model_files(self, output_dir: str, _internal_call: bool = True) -> None:
        """Write the model, the processor and the training arguments into `output_dir` (the Trainer's `save_model`,
        inside `save_model`'s staging). A trainer whose model saves itself otherwise overrides this."""
        super().save_model(output_dir, _internal_call)

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
        if not self.is_world_process_zero() or self.args is self._staging_args:
            return  # the second: TRL's _save_checkpoint (SFT's base); begin_checkpoint wrote the card before
        model_name = model_name or Path(self.args.output_dir).name
        tags = [tags] if isinstance(tags, str) else list(tags or ())
        arguments = {**self.card_arguments}
        arguments["dataset_name"] = dataset_name or arguments.get("dataset_name")
        card = build_model_card(self, self._stage, model_name, tags=tags, **arguments)
        with reporting_disk_full(Path(self.args.output_dir) / "README.md"):
            card.save(Path(self.args.output_dir) / "README.md")


# -- the setup both trainers share -------------------------------------------------------------------------------------


class TIPPoTrainerMixin(GenerationEvalMixin, TIPPoSavingMixin):
    """What a TIPPo trainer adds to the Trainer it is built on (`transformers.Trainer`, TRL's `SFTTrainer`), listed
    before it in the trainer's bases: evaluation by decoding, saving, and the setup every TIPPo trainer does.

    `__init__` keeps the processor, checks the datasets' columns and caches their frozen features
    (`training_datasets`), then sets up the Trainer with an instance of the trainer's `data_collator_class` and the
    processor as its `processing_class`. `trainer_kwargs` (callbacks, optimizers, `peft_config`, …) go to the Trainer as
    they are. A trainer whose training rows need no reference sets `requires_train_reference` to False.
    """

    data_collator_class: type = TIPPoDataCollator
    requires_train_reference = True  # every training row must hold a reference (the eval rows always must)

    def __init__(
        self,
        model: nn.Module,
        args,
        processor: TIPPoProcessor,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        **trainer_kwargs,
    ):
        self.processor = processor
        train_dataset, eval_dataset = training_datasets(
            args, unwrap_tippo(model), processor, train_dataset, eval_dataset, self.requires_train_reference
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=self.data_collator_class(processor),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            **trainer_kwargs,
        )


# -- λ1 of DAA over a run ----------------------------------------------------------------------------------------------


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


# -- per-step metrics, reduced at each log -----------------------------------------------------------------------------


class StepMetrics:
    """Per-step scalar metrics kept on the device until the next log, then averaged over the steps and over all
    processes with one gather and one host copy: logging costs no host-device sync inside the update loop. Only a
    running sum per metric is kept, so memory stays constant however rarely the run logs. A NaN stays visible.

    Every process must `add` the same names between two logs (the reduction gathers one value per name, in
    sorted-name order), which holds when the names depend on the config only, as in the TIPPo trainers; in a
    multi-process run a mismatch raises an error that lists the names instead of hanging.
    """

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: torch.Tensor | float, device: torch.device) -> None:
        value = torch.as_tensor(value, dtype=torch.float32, device=device).detach().reshape(())
        # A new tensor, never `value` itself: a buffer (λ1) changes in place after it is recorded.
        self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._counts[name] += 1

    def reduce_into(self, metrics: dict[str, list[float]], accelerator) -> None:
        """Append each metric's mean since the last call to `metrics[name]`, and start over."""
        if not self._sums:
            return
        names = sorted(self._sums)
        device = next(iter(self._sums.values())).device
        if accelerator.num_processes > 1:
            # One small collective first: processes that recorded different metrics would otherwise hang in the gather
            # below (different sizes) or silently mix up values (same size, other names).
            signature = torch.tensor([len(names), zlib.crc32("\n".join(names).encode())], device=device)
            if not bool((accelerator.gather(signature).reshape(-1, 2) == signature).all()):
                raise RuntimeError(
                    f"processes recorded different step metrics since the last log (this process: {names}); record "
                    "the same metric names on every process, e.g. decided by the config, not by local data"
                )
        means = torch.stack([self._sums[name] / self._counts[name] for name in names])
        gathered = accelerator.gather(means).reshape(-1, len(names)).mean(0).tolist()
        for name, mean in zip(names, gathered):
            metrics[name].append(mean)
        self._sums.clear()
        self._counts.clear()


# -- progress by PPO iteration -----------------------------------------------------------------------------------------


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


# -- the TIPPo model inside training's wrappers ------------------------------------------------------------------------


def unwrap_tippo(model: nn.Module) -> TIPPoForConditionalGeneration:
    """The `TIPPoForConditionalGeneration` inside DDP/DeepSpeed (`.module`), PEFT (`.get_base_model()`), `torch.compile` (`._orig_mod`)
    and policy (`.policy`) wrappers."""
    while not isinstance(model, TIPPoForConditionalGeneration):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "policy"):
            model = model.policy
        else:
            raise TypeError(f"expected a TIPPoForConditionalGeneration (possibly wrapped), got {type(model).__name__}")
    return model
