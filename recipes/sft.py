"""TIPPo SFT: next-token loss + prototype contrastive loss (Eq. 5), on TRL's SFTTrainer.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sft.py --config recipes/configs/demo_sft.yaml

Everything a run may change is in the YAML config or on the command line (`--help` lists it all).
"""

from tippo_rl.recipe_args import TIPPoModelConfig, TIPPoParser, TIPPoScriptArguments, load_datasets, load_model_and_processor, lora_config
from tippo_rl.trainer import TIPPoSFTConfig, TIPPoSFTTrainer


def main(script_args: TIPPoScriptArguments, training_args: TIPPoSFTConfig, model_args: TIPPoModelConfig):
    model, processor = load_model_and_processor(model_args, lang=script_args.demo_lang)
    train_dataset, eval_dataset = load_datasets(script_args, max_images=model.config.max_images)
    trainer = TIPPoSFTTrainer(
        model=model,
        args=training_args,
        processor=processor,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        peft_config=lora_config(model_args, model),
    )
    trainer.set_card_arguments(script_args.dataset_id, script_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the log history recipes/evaluate.py plots
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_id)
    trainer.accelerator.print(f"SFT model and processor saved to {training_args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # closes trackers and the process group; exiting with gloo still open can abort a rank


if __name__ == "__main__":
    parser = TIPPoParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig))
    with parser.reporting_input_errors():
        main(*parser.parse_args_and_config())
