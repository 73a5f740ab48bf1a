"""A training run's tail, the same in every training recipe (`recipes/sft.py`, `ppo.py`, `polishppo.py`): train, save,
push, close."""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .model_config import TIPPoModelConfig
    from .script_arguments import TIPPoScriptArguments


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
