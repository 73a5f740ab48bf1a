"""TIPPo PPO with any rewards: standard PPO (value head, GAE, clipped surrogate, KL to the starting policy), or a
critic-free baseline (`--use_value_head false --advantage_baseline group|leave_one_out|greedy|running`).

Starts from a trained model (`--model_name_or_path`, e.g. the output of recipes/sft.py), or from a fresh `--preset`:

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/ppo.py --config recipes/configs/demo_ppo.yaml

Everything a run may change is in the YAML config or on the command line (`--help` lists it all), e.g. a reward of
your own alone: `--reward_funcs my_rewards.py:my_reward`; TRL's: `--reward_funcs trl.rewards.get_repetition_penalty_reward
--reward_init_kwargs '{"trl.rewards.get_repetition_penalty_reward": {"ngram_size": 2}}'`.
"""

from tippo_rl.lora import apply_lora
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.output_dir_lock import output_dir_lock
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_trainer import PPOTrainer
from tippo_rl.training_run import model_and_datasets, train_and_save


def main(script_args: TIPPoScriptArguments, training_args: PPOConfig, model_args: TIPPoModelConfig) -> PPOTrainer:
    """Build the model, data and trainer, train and save; returns the trainer."""
    # The rewards decide what a sample needs: training rows may lack a reference (evaluation rows may not).
    model, processor, train_dataset, eval_dataset = model_and_datasets(
        script_args, model_args, require_reference=False
    )
    trainer = PPOTrainer(
        model=apply_lora(model, model_args),
        args=training_args,
        processor=processor,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,  # eval_rouge_l, eval_cider, …
    )
    train_and_save(trainer, script_args, model_args, "PPO")
    return trainer


if __name__ == "__main__":
    parser = TIPPoParser((TIPPoScriptArguments, PPOConfig, TIPPoModelConfig))
    with parser.reporting_input_errors():
        script_args, training_args, model_args = parser.parse_args_and_config()
        with output_dir_lock(training_args.output_dir):  # a second run into the same folder stops here
            main(script_args, training_args, model_args)
