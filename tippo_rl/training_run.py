"""A training run, the same in every training recipe (`recipes/sft.py`, `ppo.py`, `polishppo.py`): its model and data
(`model_and_datasets`), and its tail (`train_and_save`): train, save, push, close."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .configuration_tippo import TIPPoConfig
from .data import load_datasets
from .presets import load_model_and_processor


if TYPE_CHECKING:
    from datasets import Dataset

    from .model_config import TIPPoModelConfig
    from .modeling_tippo import TIPPoForConditionalGeneration
    from .processing_tippo import TIPPoProcessor
    from .script_arguments import TIPPoScriptArguments


def model_and_datasets(
    script_args: TIPPoScriptArguments, model_args: TIPPoModelConfig, require_reference: bool = True
) -> tuple[TIPPoForConditionalGeneration, TIPPoProcessor, Dataset, Dataset | None]:
    """The run's model, processor and (train, eval) datasets (`load_datasets`, `load_model_and_processor`).

    A saved model is loaded first, and the data checked against its number of image slots. A fresh model is built
    after the data is read: in the data's language (`--lang`, or read from the training references), and a fresh tiny
    preset on a user's own data (not the demo) takes its decoder's vocabulary from the training texts, so that it
    writes that data's words."""
    if model_args.model_name_or_path:
        model, processor = load_model_and_processor(model_args)
        train, evaluation = load_datasets(script_args, model.config.max_images, require_reference)
        return model, processor, train, evaluation
    train, evaluation = load_datasets(script_args, TIPPoConfig().max_images, require_reference)
    references = [text for text in train["reference"] if text] if "reference" in train.column_names else []
    texts = None if script_args.dataset == "demo" else references + [title for title in train["title"] if title]
    model, processor = load_model_and_processor(model_args, script_args.data_language(references), texts or None)
    return model, processor, train, evaluation


def train_and_save(trainer, script_args: TIPPoScriptArguments, model_args: TIPPoModelConfig, stage: str) -> None:
    """What every training recipe does with its trainer: train (resuming when asked), save the model and the log
    history (`trainer_state.json`, which recipes/evaluate.py plots), push to the Hub when asked, and close the run."""
    args = trainer.args
    trainer.set_card_arguments(script_args.dataset_id, script_args, model_args)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_id)
    trainer.accelerator.print(f"{stage} model and processor saved to {args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # closes trackers and the process group; exiting with gloo still open can abort a rank
