"""Tests for tippo_rl.model_card: the card of an SFT run and of a PPO run that starts from a saved model, rendered as
a user sees it: no placeholder links, no Python object reprs, what it started from, units of the metrics."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tippo_rl import TIPPoForConditionalGeneration, TIPPoProcessor, build_tiny_tippo, load_artmuse
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_trainer import PPOTrainer
from tippo_rl.trainer.sft_config import TIPPoSFTConfig
from tippo_rl.trainer.sft_trainer import TIPPoSFTTrainer


COMMON = dict(max_steps=1, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)


def rendered(trainer) -> tuple[str, dict]:
    trainer.create_model_card()
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    return card, yaml.safe_load(card.split("---")[1])


def assert_no_placeholders_or_reprs(card: str) -> None:
    assert not re.search(r"https?://github\.com/?\)", card), "a placeholder link"
    assert not re.search(r"<[\w.]+ object at 0x|\w+\(\{|[A-Z]\w+Config\(", card), "a Python object's repr"
    assert "{{" not in card and "None" not in card.split("## Training configuration")[0]


def test_sft_card_of_a_fresh_model(tmp_path, demo_dataset_dir):
    model, processor = build_tiny_tippo(seed=0)
    args = TIPPoSFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4, **COMMON)
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    trainer = TIPPoSFTTrainer(model=model, args=args, processor=processor, train_dataset=train)
    trainer.train()
    trainer.set_card_arguments("someone/scenes")
    card, metadata = rendered(trainer)
    assert_no_placeholders_or_reprs(card)
    assert metadata["pipeline_tag"] == "image-text-to-text" and metadata["datasets"] == ["someone/scenes"]
    assert "[someone/scenes](https://huggingface.co/datasets/someone/scenes)" in card
    assert "random weights at the start of this SFT run" in card  # a fresh tiny model's decoder: true here
    assert "0–1" in card and "×100" in card  # the metrics' scale is said
    assert "report_to" not in card and "pad_to_multiple_of" not in card  # resolved defaults are not options set


def test_ppo_card_of_a_run_from_a_saved_model(tmp_path, demo_dataset_dir, saved_model):
    """A PPO run from a saved SFT model: its card names where that model came from (its own card's base_model)."""
    import shutil

    start = tmp_path / "sft"
    shutil.copytree(saved_model, start)
    (start / "README.md").write_text("---\nbase_model:\n- someone/tippo-base\n---\n# an SFT model\n")
    model = TIPPoForConditionalGeneration.from_pretrained(start)
    processor = TIPPoProcessor.from_pretrained(start)
    args = PPOConfig(
        output_dir=str(tmp_path / "ppo"),
        per_device_train_batch_size=4,
        steps_per_generation=1,
        num_ppo_epochs=1,
        max_new_tokens=6,
        reward_funcs=["literal"],
        feature_cache_dir=str(tmp_path / "cache"),
        **COMMON,
    )
    trainer = PPOTrainer(model, args, processor, load_artmuse(demo_dataset_dir / "train.jsonl"))
    trainer.train()
    card, metadata = rendered(trainer)
    assert_no_placeholders_or_reprs(card)
    assert "random weights" not in card  # trained weights, though the tiny config names no hub components
    assert metadata["base_model"] == ["someone/tippo-base"]
    assert f"Started from: the saved TIPPo model `{start}`" in card
    assert "accelerator_config" not in card and "reward_funcs:\n  - literal" in card
