"""TIPPo SFT: TRL's `SFTTrainer` on the model's L_SFT = L_NTP + α·L_C, with the DAA λ1 schedule."""

from __future__ import annotations

import torch
from datasets import Dataset
from trl import SFTTrainer

from ..modeling_tippo import TIPPoForConditionalGeneration, prototype_contrastive_loss
from ..processing_tippo import TIPPoProcessor
from .sft_config import TIPPoSFTConfig
from .tippo_trainer import StepMetrics, TIPPoTrainerMixin, daa_lambda1_at, unwrap_tippo


class TIPPoSFTTrainer(TIPPoTrainerMixin, SFTTrainer):
    """Supervised fine-tuning of a [`TIPPoForConditionalGeneration`].

    Everything but the loss is TRL's / transformers': optimizer, schedule, logging, progress bars,
    checkpoints and resuming, evaluation loop, `report_to`, accelerate (DDP, DeepSpeed) and PEFT. Evaluation adds
    generation metrics (`eval_rouge_l`, `eval_cider`, `eval_literal`) to the eval loss.

    Args:
        model: the TIPPo model (or a PEFT-wrapped one).
        args: [`TIPPoSFTConfig`].
        processor: the model's [`TIPPoProcessor`]; the Trainer saves it with every checkpoint.
        train_dataset / eval_dataset: TIPPo datasets (`tippo_rl.data.load_artmuse`, `load_coco_captions`).
        peft_config: optional `peft.LoraConfig` (see `tippo_rl.lora.lora_config`).
    """

    _tag_names = ["trl", "sft", "tippo", "multimodal"]
    _stage = "SFT"

    def __init__(
        self,
        model: TIPPoForConditionalGeneration,
        args: TIPPoSFTConfig,
        processor: TIPPoProcessor,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        tippo = unwrap_tippo(model)
        if args.ddp_find_unused_parameters is None and tippo.config.freeze_encoder:
            # Every trainable weight of a TIPPo model with a frozen encoder takes part in the loss (the TIP ablation
            # does not build DAA/DO), so DDP can skip its search for unused parameters, a graph walk every step.
            args.ddp_find_unused_parameters = False
        # The model's forward computes L_SFT (Eq. 5's L_C included) from its config: this stage's settings go there, and
        # are saved with the model.
        tippo.config.contrastive_weight = args.contrastive_weight
        tippo.config.contrastive_temperature = args.contrastive_temperature
        tippo.config.contrastive_negatives = args.contrastive_negatives
        super().__init__(
            model,
            args,
            processor,
            train_dataset,
            eval_dataset,
            peft_config=peft_config,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._step_metrics = {"train": StepMetrics(), "eval": StepMetrics()}  # on the device until log()

    def scheduled_daa_lambda1(self) -> float:
        """λ1 of Eq. 2 for the current step: m/M (`linear`, the paper) or the configured constant."""
        progress = self.state.global_step / max(self.state.max_steps, 1)
        return daa_lambda1_at(self.args.daa_lambda_schedule, progress, self.args.daa_lambda1_constant)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.args.eval_generation_metrics:
            output.metrics.update(self.generation_metrics(dataloader.dataset, metric_key_prefix))
        return output

    def other_processes_images(
        self, image_signals: torch.Tensor, image_mask: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The real image signals `(M, k, d)` of the other processes' micro-batches, without gradient, and their
        `image_keys` `(M,)`, for L_C's negatives (`contrastive_gather`); None on one process or when the option is off."""
        if not self.args.contrastive_gather or self.accelerator.num_processes == 1:
            return None
        signals = self.accelerator.pad_across_processes(image_signals.detach(), dim=0)  # the last batch may be short
        mask = self.accelerator.pad_across_processes(image_mask.long(), dim=0)  # padded rows: no real image
        keys = self.accelerator.pad_across_processes(keys, dim=0)
        gathered, gathered_mask = self.accelerator.gather(signals), self.accelerator.gather(mask).bool()
        gathered_keys = self.accelerator.gather(keys)
        rows = signals.shape[0]
        other = torch.ones(gathered.shape[0], dtype=torch.bool, device=gathered.device)
        other[self.accelerator.process_index * rows : (self.accelerator.process_index + 1) * rows] = False
        real = gathered_mask[other]
        return gathered[other][real], gathered_keys[other][real]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        # unwrap_tippo alone: it sees through the wrappers accelerate's unwrap_model removes (DDP, DeepSpeed, FSDP: their
        # `.module`; torch.compile), and unwrap_model walks every submodule looking for compiled regions, ~2 ms a step.
        tippo = unwrap_tippo(model)
        if model.training:
            tippo.set_daa_lambda1(self.scheduled_daa_lambda1())
        inputs = {key: value for key, value in inputs.items() if key not in ("references", "titles", "ids")}
        outputs = model(**inputs)  # loss: L_SFT = L_NTP + α·L_C, with this trainer's α, τ and negatives (see __init__)
        loss = outputs.loss
        if outputs.contrastive_loss is not None:
            others = self.other_processes_images(outputs.image_signals, outputs.image_mask, outputs.image_keys)
            if others is not None:  # `contrastive_gather`: L_C again, the other processes' images added as negatives
                outputs.contrastive_loss = prototype_contrastive_loss(
                    outputs.image_signals,
                    outputs.image_mask,
                    self.args.contrastive_temperature,
                    "batch",
                    others[0],
                    keys=outputs.image_keys,
                    other_keys=others[1],
                )  # Eq. 5
                loss = outputs.ntp_loss + self.args.contrastive_weight * outputs.contrastive_loss  # L_SFT
            images = outputs.image_mask.sum()
            self._step_metrics[mode].add("contrastive/images", images, self.accelerator.device)
            self._step_metrics[mode].add(
                "contrastive/negatives",
                images + (len(others[0]) if others is not None else 0),
                self.accelerator.device,
            )
            self._step_metrics[mode].add("loss/contrastive", outputs.contrastive_loss, self.accelerator.device)
        self._step_metrics[mode].add("loss/ntp", outputs.ntp_loss, self.accelerator.device)
        self._step_metrics[mode].add("daa/lambda1", tippo.daa_lambda1, self.accelerator.device)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        self._step_metrics[mode].reduce_into(self._metrics[mode], self.accelerator)
        super().log(logs, start_time)
