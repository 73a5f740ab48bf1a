"""TIPPo PolishPPO: PPO on G_m = γ^m·R_literal + γ^(M−m)·R_semantic with the running advantage normalisation of Eq. 6.

Starts from the SFT model (`--model_name_or_path`, e.g. the output of recipes/sft.py):

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/polishppo.py --config recipes/configs/demo_polishppo.yaml

Everything a run may change is in the YAML config or on the command line (`--help` lists it all), e.g. extra reward
plug-ins: `--reward_funcs literal semantic rewards/length_penalty.py:length_penalty --reward_weights 1 1 0.5`; k completions
per prompt with a per-prompt baseline: `--num_generations 4 --advantage_baseline leave_one_out`; evaluation by decoding
with the best greedy checkpoint kept: `--eval_strategy steps --eval_steps 40 --save_steps 40 --load_best_model_at_end true
--metric_for_best_model eval_rouge_l`.
"""

from tippo_rl.lora import apply_lora
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.output_dir_lock import output_dir_lock
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer.polishppo_config import PolishPPOConfig
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer
from tippo_rl.training_run import model_and_datasets, train_and_save


def main(
    script_args: TIPPoScriptArguments, training_args: PolishPPOConfig, model_args: TIPPoModelConfig
) -> PolishPPOTrainer:
    """Build the model, data and trainer, train and save; returns the trainer (recipes/ablate.py reads its logs)."""
    if not model_args.model_name_or_path:
        raise ValueError("PolishPPO starts from a trained model: set --model_name_or_path (e.g. outputs/demo_sft)")
    model, processor, train_dataset, eval_dataset = model_and_datasets(script_args, model_args)
    trainer = PolishPPOTrainer(
        model=apply_lora(model, model_args),
        args=training_args,
        processor=processor,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,  # eval_rouge_l, eval_cider, …
    )
    train_and_save(trainer, script_args, model_args, "PolishPPO")
    return trainer


if __name__ == "__main__":
    parser = TIPPoParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig))
    with parser.reporting_input_errors():
        script_args, training_args, model_args = parser.parse_args_and_config()
        with output_dir_lock(training_args.output_dir):  # a second run into the same folder stops here
            main(script_args, training_args, model_args)
