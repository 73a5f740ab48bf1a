"""Every RL mode learns: from a short SFT of the tiny model, each trainer mode raises a simple reward of its own, in
what it samples and in its greedy decode. A mode without such a test is not known to work (the PPO arithmetic can be
right while the update goes nowhere)."""

from __future__ import annotations

import copy
import re
import statistics

import pytest
import torch

from tippo_rl import load_artmuse
from tippo_rl.data_collator import TIPPoDataCollator, model_inputs
from tippo_rl.trainer.polishppo_config import PolishPPOConfig
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer
from tippo_rl.trainer.ppo_config import PPOConfig
from tippo_rl.trainer.ppo_trainer import PPOTrainer


def red_words(completions, **kwargs) -> list[float]:
    """The simple reward: how many times a completion says "red" (a colour the short SFT model already names)."""
    return [float(len(re.findall(r"\bred\b", text))) for text in completions]


@pytest.fixture(scope="module")
def short_sft(tiny_model_and_processor, demo_dataset_dir):
    """The tiny model after 60 SFT steps on the 24 demo scenes: it describes scenes, imperfectly."""
    return sft(tiny_model_and_processor, demo_dataset_dir, steps=60)


def sft(tiny_model_and_processor, demo_dataset_dir, steps: int):
    """A copy of the tiny model after `steps` SFT steps (lr 3e-3, batch 8) on the 24 demo scenes."""
    model, processor = copy.deepcopy(tiny_model_and_processor[0]), tiny_model_and_processor[1]
    rows = list(load_artmuse(demo_dataset_dir / "train.jsonl"))
    collator = TIPPoDataCollator(processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = collator([rows[i] for i in torch.randperm(len(rows), generator=generator)[:8].tolist()])
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), processor


def rl_settings(tmp_path, **overrides) -> dict:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        total_iterations=16,
        per_device_train_batch_size=8,
        steps_per_generation=2,
        num_ppo_epochs=2,
        max_new_tokens=16,
        learning_rate=3e-3,
        kl_coef=0.0,
        logging_steps=4,  # one log per iteration
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    settings.update(overrides)
    return settings


def greedy_reward(trainer, reward, rows, max_new_tokens: int = 16) -> float:
    """Mean `reward` of the policy's greedy decode of `rows`."""
    policy = trainer._policy(trainer.accelerator.unwrap_model(trainer.model))
    batch = TIPPoDataCollator(trainer.processor, with_labels=False)(rows)
    with torch.no_grad():
        ids = policy.generate(**model_inputs(batch), do_sample=False, max_new_tokens=max_new_tokens)
    completions = trainer.processor.batch_decode(ids)
    return statistics.fmean(reward(completions=completions, reference=[r["reference"] for r in rows]))


def assert_learns(trainer, reward, reward_key: str, rows, margin: float, greedy=None) -> None:
    """The sampled reward (mean of the last three iterations vs the first three) and the greedy decode's reward on
    `rows` (after vs before training; `greedy()` measures it where given) both rise by more than `margin`."""
    greedy = greedy or (lambda: greedy_reward(trainer, reward, rows))
    before = greedy()
    trainer.train()
    sampled = [entry[reward_key] for entry in trainer.state.log_history if reward_key in entry]
    after = greedy()
    first, last = statistics.fmean(sampled[:3]), statistics.fmean(sampled[-3:])
    print(f"{reward_key}: sampled {first:.3f} → {last:.3f}, greedy {before:.3f} → {after:.3f}")
    assert last > first + margin, f"sampled reward {first:.3f} → {last:.3f}: {sampled}"
    assert after > before + margin, f"greedy reward {before:.3f} → {after:.3f}"


MODES = {
    "PPO, value head + GAE": dict(use_value_head=True),
    "group (GRPO)": dict(use_value_head=False, advantage_baseline="group", num_generations=4),
    "group, scale_rewards none (Dr. GRPO)": dict(
        use_value_head=False, advantage_baseline="group", num_generations=4, scale_rewards="none"
    ),
    "leave-one-out (RLOO)": dict(use_value_head=False, advantage_baseline="leave_one_out", num_generations=4),
    "greedy (SCST)": dict(
        use_value_head=False, advantage_baseline="greedy", num_generations=4, learning_rate=1e-3, total_iterations=32
    ),
    "running (Eq. 6)": dict(use_value_head=False, advantage_baseline="running", advantage_window=4),
    # TRL's loss types (bnpo, the default, is every mode above).
    "algorithm grpo, loss_type grpo": dict(algorithm="grpo", num_generations=4, loss_type="grpo"),
    "algorithm dr_grpo (loss_type dr_grpo)": dict(algorithm="dr_grpo", num_generations=4),
    # (mask_truncated_completions is tested in test_grpo_vocabulary: with this reward, which pays for long texts, it
    # masks the completions that earn most, and learning stalls, as DAPO's overlong filter is meant to.)
    "DAPO: loss_type dapo, clip-higher": dict(
        algorithm="grpo", num_generations=4, loss_type="dapo", cliprange_high=0.28
    ),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_ppo_mode_raises_a_simple_reward(tmp_path, short_sft, demo_dataset_dir, mode):
    model, processor = short_sft
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    args = PPOConfig(**rl_settings(tmp_path, **MODES[mode]))
    trainer = PPOTrainer(copy.deepcopy(model), args, processor, train, reward_funcs=[red_words])
    assert_learns(trainer, red_words, "rewards/red_words/mean", [train[i] for i in range(8)], margin=0.5)


def test_polishppo_raises_its_own_return(tmp_path, short_sft, demo_dataset_dir):
    """PolishPPO's G_m (literal + semantic) against one fixed reference for every scene: a target the policy can reach
    in a few iterations, scored by the real Eq. 7 and Eq. 8."""
    model, processor = short_sft
    target = "in the garden there is a red circle."
    train = load_artmuse(demo_dataset_dir / "train.jsonl").map(lambda row: {"reference": target})
    args = PolishPPOConfig(
        **rl_settings(tmp_path, max_new_tokens=24, total_iterations=24),
        semantic_model="auto",
        semantic_backend="static",
    )
    trainer = PolishPPOTrainer(copy.deepcopy(model), args, processor, train)
    literal = trainer.reward_funcs[trainer.literal_index]
    assert_learns(trainer, literal, "rewards/literal/mean", [train[i] for i in range(8)], margin=0.05)


@pytest.fixture(scope="module")
def longer_sft(tiny_model_and_processor, demo_dataset_dir):
    """300 SFT steps: its samples at temperature 1 describe scenes (after 60, too few do for φ's reward to guide)."""
    return sft(tiny_model_and_processor, demo_dataset_dir, steps=300)


def test_the_scene_verifier_is_a_reward_rl_can_climb(tmp_path, longer_sft, demo_dataset_dir):
    """The demo's scene verifier (φ's reading of each image, no reference) as the only reward of a group-baseline PPO,
    given by its spec alone: the trainer hands it a frozen copy of the policy's φ, and its reward rises, sampled and
    greedy."""
    model, processor = longer_sft
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    settings = rl_settings(
        tmp_path, **MODES["group (GRPO)"], max_new_tokens=24, learning_rate=3e-4, total_iterations=32
    )
    args = PPOConfig(**settings, reward_funcs=["tippo_rl.demo.scene_verifier:SceneVerifier"])
    trainer = PPOTrainer(copy.deepcopy(model), args, processor, train)
    verifier = trainer.reward_funcs[0]
    policy_encoder = trainer.accelerator.unwrap_model(trainer.model).encoder
    assert verifier.encoder is not policy_encoder and not verifier.encoder.training
    assert all(torch.equal(a, b) for a, b in zip(verifier.encoder.parameters(), policy_encoder.parameters()))
    rows = [train[i] for i in range(8)]
    images = [row["images"] for row in rows]

    def greedy_verifier_reward() -> float:
        scored = lambda **kwargs: verifier(prompts=None, images=images, **kwargs)  # noqa: E731
        return greedy_reward(trainer, scored, rows, max_new_tokens=24)

    assert_learns(trainer, None, "rewards/scene_verifier/mean", rows, margin=0.05, greedy=greedy_verifier_reward)


def test_skip_solved_prompts_keeps_the_prompts_whose_greedy_decode_misses_its_reference(
    tmp_path, short_sft, demo_dataset_dir
):
    """Scenes 0, 2, 4, … get the starting policy's own greedy decode as their reference (solved); the trainer trains on
    the odd ones the policy gets wrong only. All solved, or no reference column: one line saying what to do."""
    model, processor = short_sft
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    batch = TIPPoDataCollator(processor, with_labels=False)([train[i] for i in range(len(train))])
    with torch.no_grad():
        decoded = processor.batch_decode(model.generate(**model_inputs(batch), do_sample=False, max_new_tokens=16))
    solved = train.map(lambda row, i: {"reference": decoded[i] if i % 2 == 0 else row["reference"]}, with_indices=True)
    unsolved = [train[i]["id"] for i in range(1, len(train), 2) if decoded[i] != train[i]["reference"]]
    assert 0 < len(unsolved) < len(train) // 2  # the short SFT solves some of the odd scenes, not all
    args = PPOConfig(**rl_settings(tmp_path, skip_solved_prompts=True), reward_funcs=["cider"])
    trainer = PPOTrainer(copy.deepcopy(model), args, processor, solved)
    assert trainer.train_dataset["id"] == unsolved

    all_solved = train.map(lambda row, i: {"reference": decoded[i]}, with_indices=True)
    with pytest.raises(ValueError, match="decodes all 24 training prompts as their references"):
        PPOTrainer(copy.deepcopy(model), args, processor, all_solved)
    with pytest.raises(ValueError, match="has none: add references or set skip_solved_prompts false"):
        PPOTrainer(copy.deepcopy(model), args, processor, train.remove_columns("reference"), reward_funcs=[red_words])
