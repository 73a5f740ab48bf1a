"""TIPPo SFT: next-token loss + prototype contrastive loss (Eq. 5), on TRL's SFTTrainer.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sft.py --config recipes/configs/demo_sft.yaml

Everything a run may change is in the YAML config or on the command line (`--help` lists it all).
"""

from tippo_rl.lora import lora_config
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.output_dir_lock import output_dir_lock
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig, TIPPoSFTTrainer
from tippo_rl.training_run import model_and_datasets, train_and_save


def main(
    script_args: TIPPoScriptArguments, training_args: TIPPoSFTConfig, model_args: TIPPoModelConfig
) -> TIPPoSFTTrainer:
    """Build the model, data and trainer, train and save; returns the trainer (recipes/ablate.py reads its logs)."""
    model, processor, train_dataset, eval_dataset = model_and_datasets(script_args, model_args)
    trainer = TIPPoSFTTrainer(
        model=model,
        args=training_args,
        processor=processor,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        peft_config=lora_config(model_args, model),
    )
    train_and_save(trainer, script_args, model_args, "SFT")
    return trainer


if __name__ == "__main__":
    parser = TIPPoParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))
    with parser.reporting_input_errors():
        script_args, training_args, model_args = parser.parse_args_and_config()
        with output_dir_lock(training_args.output_dir):  # a second run into the same folder stops here
            main(script_args, training_args, model_args)
