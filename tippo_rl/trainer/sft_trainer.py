"""TIPPo SFT: TRL's `SFTTrainer` with L_SFT = L_NTP + α·L_C and the DAA λ1 schedule."""

from __future__ import annotations

import copy
from pathlib import Path

from datasets import Dataset
from peft import PeftModel
from trl import SFTTrainer

from ..data import TIPPoDataCollator
from ..feature_cache import cache_frozen_features
from ..model_card import build_model_card
from ..modeling_tippo import TIPPoModel, prototype_contrastive_loss
from ..processing_tippo import TIPPoProcessor
from .sft_config import TIPPoSFTConfig
from .utils import unwrap_tippo


class TIPPoSFTTrainer(SFTTrainer):
    """Supervised fine-tuning of a [`TIPPoModel`].

    Everything but the loss is TRL's / transformers': optimizer, schedule, logging, progress bars,
    checkpoints and resuming, evaluation loop, `report_to`, accelerate (DDP, DeepSpeed) and PEFT.

    Args:
        model: the TIPPo model (or a PEFT-wrapped one).
        args: [`TIPPoSFTConfig`].
        processor: the model's [`TIPPoProcessor`]; the Trainer saves it with every checkpoint.
        train_dataset / eval_dataset: TIPPo datasets (`tippo_rl.data.load_artmuse`, `load_coco_captions`).
        peft_config: optional `peft.LoraConfig` (see `tippo_rl.recipe_args.lora_config`).
    """

    _tag_names = ["trl", "sft", "tippo", "multimodal"]

    def __init__(
        self,
        model: TIPPoModel,
        args: TIPPoSFTConfig,
        processor: TIPPoProcessor,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        self.processor = processor
        if args.use_feature_cache and unwrap_tippo(model).config.freeze_encoder:
            # Every process reads the same cache file; the main process writes it first.
            with args.main_process_first(desc="caching frozen encoder features"):
                train_dataset = cache_frozen_features(train_dataset, unwrap_tippo(model), processor, args.feature_cache_dir)
                if eval_dataset is not None:
                    eval_dataset = cache_frozen_features(eval_dataset, unwrap_tippo(model), processor, args.feature_cache_dir)
        super().__init__(
            model=model,
            args=args,
            data_collator=TIPPoDataCollator(processor),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            peft_config=peft_config,
            callbacks=callbacks,
            optimizers=optimizers,
        )

    def daa_lambda1(self) -> float:
        """λ1 of Eq. 2 for the current step: m/M (`linear`, the paper) or the configured constant."""
        if self.args.daa_lambda_schedule == "constant":
            return self.args.daa_lambda1
        return min(self.state.global_step / max(self.state.max_steps, 1), 1.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if model.training:
            unwrap_tippo(self.accelerator.unwrap_model(model)).set_daa_lambda1(self.daa_lambda1())
        inputs = {key: value for key, value in inputs.items() if key not in ("references", "titles", "ids")}
        outputs = model(**inputs)
        ntp_loss = outputs.loss  # L_NTP, mean over the batch's label tokens
        loss = ntp_loss
        if self.args.contrastive_weight > 0:
            contrastive_loss = prototype_contrastive_loss(
                outputs.image_signals, outputs.image_mask, self.args.contrastive_temperature
            )  # L_C, Eq. 5
            loss = ntp_loss + self.args.contrastive_weight * contrastive_loss  # L_SFT
            self._metrics[mode]["loss/contrastive"].append(self._gathered_mean(contrastive_loss))
        self._metrics[mode]["loss/ntp"].append(self._gathered_mean(ntp_loss))
        self._metrics[mode]["daa/lambda1"].append(unwrap_tippo(self.accelerator.unwrap_model(model)).daa_lambda1.item())
        return (loss, outputs) if return_outputs else loss

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Write a TIPPo model card (README.md) to `output_dir`: base models, tags, training config, final metrics."""
        if not self.is_world_process_zero():
            return
        model_name = model_name or Path(self.args.output_dir).name
        card = build_model_card(self, "SFT", model_name, dataset_name, tags=[tags] if isinstance(tags, str) else tags or ())
        card.save(Path(self.args.output_dir) / "README.md")

    def _gathered_mean(self, value) -> float:
        return self.accelerator.gather_for_metrics(value.detach().reshape(1)).mean().item()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save model + processor. The run's `output_dir` always receives a model that
        `TIPPoModel.from_pretrained` loads: a LoRA run saves the merged model there (what the next stage and
        inference load) and the adapter alone in `output_dir/adapter`. Checkpoints keep the Trainer's format.
        """
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PeftModel) or Path(output_dir).resolve() != Path(self.args.output_dir).resolve():
            return super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            model.save_pretrained(Path(output_dir) / "adapter")
            copy.deepcopy(model).merge_and_unload().save_pretrained(output_dir)
            self.processor.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Write a TIPPo model card (README.md) to `output_dir`: base models, tags, training config, final metrics."""
        if not self.is_world_process_zero():
            return
        model_name = model_name or Path(self.args.output_dir).name
        card = build_model_card(self, "SFT", model_name, dataset_name, tags=[tags] if isinstance(tags, str) else tags or ())
        card.save(Path(self.args.output_dir) / "README.md")

    def _gathered_mean(self, value) -> float:
        return self.accelerator.gather_for_metrics(value.detach().reshape(1)).mean().item()

    def save_tippo(self, output_dir: str) -> None:
        """Save the final model + processor so that `TIPPoModel.from_pretrained(output_dir)` loads it.

        A LoRA run saves the merged model there (what the next stage and inference load) and the adapter
        alone in `output_dir/adapter`.
        """
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PeftModel):
            self.save_model(output_dir)
            return
        if self.args.should_save:
            model.save_pretrained(f"{output_dir}/adapter")
            copy.deepcopy(model).merge_and_unload().save_pretrained(output_dir)
            self.processor.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()
