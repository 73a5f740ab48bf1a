"""Tests for tippo_rl.evaluation.metrics: hand-checked values per metric, equality with pycocoevalcap, tokenisation, errors.

METEOR and PTB tests need Java (skipped without it); METEOR starts two JVMs in all (about 8 s each).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import warnings

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tippo_rl.evaluation import (  # noqa: E402
    ExternalToolError,
    JavaNotFoundError,
    MeteorScorer,
    MetricsWarning,
    compute_metrics,
    normalize_metric_names,
    tokenization,  # noqa: E402
    tokenize_texts,
)
from tippo_rl.evaluation import metrics as M  # noqa: E402


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (METEOR / PTB tokenizer)")

NGRAM = ("bleu", "rouge_l", "cider")


def score(preds, refs, metrics=NGRAM, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricsWarning)  # a test that expects a warning says so
        return compute_metrics(preds, refs, metrics=metrics, **kw)


# ------------------------------------------------------------------------------------------- tokenisation


def test_none_passes_text_through_exactly():
    texts = ["一只 狗  在 跑 ", "A Dog, running.", ""]
    assert tokenize_texts(texts, "none") == texts


def test_char_mode_one_token_per_cjk_character_ascii_words_kept():
    assert tokenize_texts(["一只狗 running fast，3D模型。", "  我 爱\t北京 ", "a  b"], "char") == [
        "一 只 狗 running fast ， 3D 模 型 。",
        "我 爱 北 京",
        "a b",
    ]


def test_jieba_mode_word_segmentation():
    # jieba's own README example; existing whitespace is a boundary and is not a token.
    assert tokenize_texts(["我来到北京清华大学", "我来到 北京清华大学\n"], "jieba") == [
        "我 来到 北京 清华大学",
        "我 来到 北京 清华大学",
    ]


@needs_java
def test_ptb_mode_matches_pycocoevalcap_ptbtokenizer():
    from pycocoevalcap.tokenizer import ptbtokenizer
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
        pytest.skip("pycocoevalcap's PTBTokenizer writes its temporary file next to its jar, which is read-only here")
    texts = ["A dog's running, on the grass.", "", "Two  MEN (smiling) -- at a cafe!", "ok."]
    upstream = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    ours = tokenize_texts(texts, "ptb")
    assert ours == [upstream[i][0] for i in range(len(texts))]
    assert ours[0] == "a dog 's running on the grass"
    # Upstream loses every caption after a "\r"; ours treats it as a space.
    assert tokenize_texts(["x\ry", "z"], "ptb") == ["x y", "z"]


def test_tokenize_modes_feed_the_ngram_metrics():
    preds, refs = {1: "一只狗"}, {1: ["一只猫"]}
    # char: 一 只 狗 vs 一 只 猫: 2 of 3 unigrams, LCS 2 of 3 both ways.
    r = score(preds, refs, metrics=("bleu", "rouge_l"), tokenize="char")
    assert r.corpus["BLEU-1"] == pytest.approx(2 / 3, abs=1e-6)
    assert r.corpus["ROUGE-L"] == pytest.approx(2 / 3)
    # none: each string is one token, and they differ.
    r = score(preds, refs, metrics=("bleu", "rouge_l"), tokenize="none")
    assert r.corpus["BLEU-1"] < 1e-6 and r.corpus["ROUGE-L"] == 0.0
    # jieba on raw text == none on the same text segmented by jieba.
    raw_p, raw_r = {1: "我来到北京清华大学"}, {1: ["他来到北京大学"]}
    seg_p = {1: tokenize_texts([raw_p[1]], "jieba")[0]}
    seg_r = {1: tokenize_texts(raw_r[1], "jieba")}
    assert score(raw_p, raw_r, metrics=("bleu", "rouge_l"), tokenize="jieba").corpus == (
        score(seg_p, seg_r, metrics=("bleu", "rouge_l"), tokenize="none").corpus
    )


# --------------------------------------------------------------------------------------- hand-checked values


def test_bleu_identical_long_sentence_is_one():
    text = "a man in a red shirt rides a bicycle down the street"
    r = score({1: text}, {1: [text, "someone is cycling"]}, metrics=("bleu",))
    for n in range(1, 5):
        # pycocoevalcap adds 1e-15 / 1e-9 to avoid 0/0, so "1" is 1 - O(1e-9).
        assert r.corpus[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-8)
        assert r.per_sample[1][f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-8)


def test_bleu_by_hand():
    # hyp: the cat sat on the mat / ref: the cat is on the mat (same length, brevity penalty 1)
    # 1-grams 5/6 (the×2, cat, on, mat); 2-grams 3/5 (the cat, on the, the mat); 3-grams 1/4 (on the mat); 4-grams 0/3
    r = score({1: "the cat sat on the mat"}, {1: ["the cat is on the mat"]}, metrics=("bleu",))
    assert r.corpus["BLEU-1"] == pytest.approx(5 / 6, abs=1e-8)
    assert r.corpus["BLEU-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-8)
    assert r.corpus["BLEU-3"] == pytest.approx(0.5, abs=1e-8)  # (5/6 · 3/5 · 1/4)^(1/3) = 0.125^(1/3)
    assert r.corpus["BLEU-4"] < 1e-3
    # brevity penalty: 2 words against 6 -> exp(1 - 6/2)
    r = score({1: "the cat"}, {1: ["the cat is on the mat"]}, metrics=("bleu",))
    assert r.corpus["BLEU-1"] == pytest.approx(math.exp(-2), abs=1e-8)


def test_rouge_l_by_hand():
    # LCS(a b c d, a c e d f) = a c d = 3; P = 3/4, R = 3/5; F_beta with beta = 1.2 (coco-caption)
    p, r_ = 3 / 4, 3 / 5
    expected = (1 + 1.2**2) * p * r_ / (r_ + 1.2**2 * p)
    r = score({1: "a b c d"}, {1: ["a c e d f", "x"]}, metrics=("rouge_l",))
    assert r.corpus["ROUGE-L"] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.6535714285714286)


def test_cider_d_by_hand():
    """Two images, one reference each. idf = log(N) - log(df) with N = 2, so an n-gram found in the references
    of both images weighs 0 and every other n-gram (also one in no reference: df is clamped to 1) weighs log 2.

    Image 1, "a dog sits" against "a dog runs": unigrams {dog, sits} vs {dog, runs} (a weighs 0) -> cos 1/2;
    bigrams {a dog, dog sits} vs {a dog, dog runs} -> 1/2; trigrams differ -> 0; no 4-gram -> 0.
    Same length, so no Gaussian penalty: 10 · mean(1/2, 1/2, 0, 0) = 2.5.
    Image 2, identical "a cat sits": cos 1 for n = 1..3, 0 for n = 4: 10 · 3/4 = 7.5. Corpus: 5.0.
    """
    preds = {1: "a dog sits", 2: "a cat sits"}
    refs = {1: ["a dog runs"], 2: ["a cat sits"]}
    r = score(preds, refs, metrics=("cider",))
    assert r.per_sample[1]["CIDEr"] == pytest.approx(2.5, abs=1e-12)
    assert r.per_sample[2]["CIDEr"] == pytest.approx(7.5, abs=1e-12)
    assert r.corpus["CIDEr"] == pytest.approx(5.0, abs=1e-12)


def test_cider_single_sample_is_zero_and_warns():
    with pytest.warns(MetricsWarning, match="one sample"):
        r = compute_metrics({1: "a b"}, {1: ["a b"]}, metrics=("cider",))
    assert r.corpus["CIDEr"] == 0.0


# ------------------------------------------------------------------------- METEOR and pycocoevalcap equality

# Pre-segmented Chinese, as COCO-CN is scored; irregular spacing must reach the scorers untouched.
ZH_PREDS = {
    101: "一只 狗 在 草地 上 奔跑",
    102: "两 个 男人 在  街上 走",
    103: "狗 在 跑",
    104: "",
    105: "一个 女人 拿着 一把 伞 ",
}
ZH_REFS = {
    101: ["一只 狗 在 草地 上 奔跑", "草地 上 有 一只 狗"],
    102: ["两个 男人 走 在 街道 上", "街上 有 两个 人"],
    103: ["猫 在 跑"],
    104: ["一辆 红色 的 汽车"],
    105: ["一个 女人 撑着 伞 走路", "女人 拿着 雨伞"],
}


@needs_java
def test_meteor_and_none_mode_equal_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {k: list(v) for k, v in ZH_REFS.items()}
    res = {k: [v] for k, v in ZH_PREDS.items()}
    expected: dict[str, tuple[float, list[float]]] = {}
    bleu, bleus = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        expected[f"BLEU-{n + 1}"] = (bleu[n], bleus[n])
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)
    expected["CIDEr"] = Cider().compute_score(gts, res)
    upstream_meteor = Meteor()
    try:
        expected["METEOR"] = upstream_meteor.compute_score(gts, res)
    finally:
        del upstream_meteor

    with MeteorScorer() as meteor:
        with pytest.warns(MetricsWarning, match=r"1 prediction is empty .*ids: 104"):
            r = compute_metrics(
                ZH_PREDS, ZH_REFS, metrics=("bleu", "meteor", "rouge_l", "cider"), meteor_scorer=meteor
            )
        assert r.n_empty_predictions == 1 and r.n_samples == 5
        for name, (corpus, per_sample) in expected.items():
            assert r.corpus[name] == pytest.approx(float(corpus), abs=1e-9), name
            for k, s in zip(gts, per_sample):
                assert r.per_sample[k][name] == pytest.approx(float(s), abs=1e-9), (name, k)

        # The jar's own values: identical -> exactly 1, empty -> 0, and 2 of 3 words in order -> 0.3184...
        assert r.per_sample[101]["METEOR"] == 1.0
        assert r.per_sample[104]["METEOR"] == 0.0
        assert r.per_sample[103]["METEOR"] == pytest.approx(0.3184464413482169, abs=1e-9)
        assert all(r.per_sample[104][m] == 0.0 for m in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"))
        # An identical corpus is 1 at corpus level too.
        identical = {1: ["a dog runs on the grass"], 2: ["一只 狗"]}
        same = meteor.compute_score(identical, identical)
        assert same == (1.0, [1.0, 1.0])

        # The jar's stdio protocol splits on newlines and "|||"; both are neutralised in hypotheses and references.
        messy = meteor.compute_score({1: ["狗 在 ||| 跑"], 2: ["一只\n猫"]}, {1: ["猫 在\n跑"], 2: ["一只 猫"]})
        clean = meteor.compute_score({1: ["狗 在  跑"], 2: ["一只 猫"]}, {1: ["猫 在 跑"], 2: ["一只 猫"]})
        assert messy == clean

        # A dead JVM is reported, not a bare float('') error or a hang.
        proc = meteor._meteor.meteor_p
        proc.kill()
        proc.wait()
        with pytest.raises(ExternalToolError, match="METEOR jar failed"):
            meteor.compute_score({1: ["a"]}, {1: ["a"]})
        with pytest.raises(ExternalToolError, match="closed"):
            meteor.compute_score({1: ["a"]}, {1: ["a"]})
    assert meteor._meteor.meteor_p is None and proc.poll() is not None


@needs_java
def test_a_low_priority_meteor_runs_the_same_jar_behind_nice_and_scores_the_same():
    gts = {k: list(v) for k, v in ZH_REFS.items()}
    res = {k: [v] for k, v in ZH_PREDS.items()}
    with MeteorScorer() as plain, MeteorScorer(low_priority=True) as low:
        command = low._meteor.meteor_cmd
        if shutil.which("nice"):
            assert command[1:3] == ["-n", "19"] and command[3:] == plain._meteor.meteor_cmd
        assert low.compute_score(gts, res) == plain.compute_score(gts, res)


def test_compute_metrics_closes_the_meteor_it_starts(monkeypatch):
    events = []

    class FakeMeteor:
        def __init__(self):
            events.append("start")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            events.append("close")

        def compute_score(self, gts, res):
            raise ExternalToolError("boom")

    monkeypatch.setattr(M, "MeteorScorer", FakeMeteor)
    monkeypatch.setattr(M, "_require_java", lambda what: "java")
    with pytest.raises(ExternalToolError, match="boom"):
        compute_metrics({1: "a b"}, {1: ["a b"]}, metrics=("meteor",))
    assert events == ["start", "close"]


def test_missing_java_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java in an empty directory
    with pytest.raises(JavaNotFoundError, match="apt-get install default-jre-headless"):
        compute_metrics({1: "a b"}, {1: ["a b"]}, metrics=("meteor",))
    with pytest.raises(JavaNotFoundError, match="PTB"):
        compute_metrics({1: "a b"}, {1: ["a b"]}, metrics=("bleu",), tokenize="ptb", lang="en")


def test_missing_optional_dependency_says_what_to_install(monkeypatch):
    monkeypatch.setattr(tokenization, "_jieba", None)
    monkeypatch.setitem(sys.modules, "jieba", None)  # makes `import jieba` fail like an absent package
    with pytest.raises(ExternalToolError, match=r"jieba is not installed; .*pip install 'tippo_rl\[eval\]'"):
        tokenize_texts(["我来到北京"], "jieba")


# ----------------------------------------------------------------------------------------------- BERTScore


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT and its WordPiece vocabulary, saved like a hub model.

    The tokenizer is saved without model_max_length, as many local checkpoints are, to cover that case.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny_bert")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *"一只狗在草地上跑猫两个男人街走",
        "a",
        "dog",
        "runs",
        "cat",
    ]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(d)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(d)
    return str(d)


def test_bertscore_with_a_local_model(tiny_bert_dir):
    preds = {1: "一只狗在草地上跑", 2: "两个男人在街上走", 3: "", 4: "a dog runs"}
    refs = {1: ["一只狗在草地上跑"], 2: ["一只猫"], 3: ["一只猫"], 4: ["a cat", "a dog runs"]}
    with pytest.warns(MetricsWarning, match="empty"):
        r = compute_metrics(
            preds,
            refs,
            metrics=("bertscore",),
            bertscore_model=tiny_bert_dir,
            bertscore_num_layers=2,
            bertscore_device="cpu",
        )
    ps = r.per_sample
    assert ps[1]["BERTScore-F1"] == pytest.approx(1.0, abs=1e-5)
    assert ps[4]["BERTScore-F1"] == pytest.approx(1.0, abs=1e-5)  # best of several references
    assert ps[2]["BERTScore-F1"] < 0.99
    assert ps[3] == {"BERTScore-P": 0.0, "BERTScore-R": 0.0, "BERTScore-F1": 0.0}  # bert_score's empty convention
    assert r.corpus["BERTScore-F1"] == pytest.approx(sum(s["BERTScore-F1"] for s in ps.values()) / 4)
    assert r.info["bertscore_model"] == tiny_bert_dir and r.info["bertscore_num_layers"] == 2
    assert "L2" in r.info["bertscore_hash"]


def test_bertscore_unknown_model_needs_num_layers(tmp_path):
    with pytest.raises(ValueError, match="bertscore_num_layers"):
        compute_metrics({1: "a"}, {1: ["a"]}, metrics=("bertscore",), bertscore_model=str(tmp_path))
    with pytest.raises(ExternalToolError, match="could not load BERTScore model"):
        compute_metrics(
            {1: "a"},
            {1: ["a"]},
            metrics=("bertscore",),
            bertscore_model=str(tmp_path / "nope"),
            bertscore_num_layers=1,
        )


# ------------------------------------------------------------------------------------- ids, empties, options


def test_mismatched_ids_are_named():
    with pytest.raises(ValueError) as e:
        score({1: "a b", 2: "c d", "x": "e"}, {1: ["a b"], 3: ["c d"]})
    msg = str(e.value)
    assert "2 predictions without references (ids: 2, 'x')" in msg
    assert "1 reference id without a prediction (ids: 3)" in msg
    assert "on_missing='skip'" in msg


def test_none_prediction_counts_as_missing():
    with pytest.raises(ValueError, match=r"without a prediction \(ids: 2\)"):
        score({1: "a b", 2: None}, {1: ["a b"], 2: ["c"]})


def test_long_id_lists_are_shortened():
    with pytest.raises(ValueError, match=r"ids: 0, 1, .*, 9, \.\.\. and 5 more"):
        score(dict.fromkeys(range(15), "a"), {100: ["a"]})


def test_skip_leaves_out_mismatched_ids_with_a_counted_warning():
    with pytest.warns(MetricsWarning, match="skipped 1 prediction without references"):
        r = compute_metrics(
            {1: "a b", 2: "a c", 9: "z"}, {1: ["a b"], 2: ["a c"], 5: ["q"]}, metrics=NGRAM, on_missing="skip"
        )
    assert r.n_samples == 2 and list(r.per_sample) == [1, 2]
    assert r.skipped == {"predictions_without_references": [9], "references_without_predictions": [5]}
    assert r.summary()["n_skipped"] == 2


def test_empty_prediction_is_scored_zero_and_counted():
    with pytest.warns(MetricsWarning, match=r"1 prediction is empty .*ids: 2"):
        r = compute_metrics({1: "a b c", 2: "   "}, {1: ["a b c"], 2: ["d e f"]}, metrics=NGRAM)
    assert r.n_empty_predictions == 1
    assert all(v == 0.0 for v in r.per_sample[2].values())
    assert r.per_sample[1]["ROUGE-L"] == 1.0


def test_warnings_can_be_collected_without_being_issued():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricsWarning)
        r = compute_metrics({1: "a b c", 2: " "}, {1: ["a b c"], 2: ["d"]}, metrics=("rouge_l",), issue_warnings=False)
    assert r.warnings == ["1 prediction is empty and scored as an empty caption (ids: 2)"]


def test_empty_prediction_error_mode_names_the_id():
    with pytest.raises(ValueError, match=r"1 prediction is empty after char tokenisation \(ids: 'b'\)"):
        score({"a": "一只狗", "b": " "}, {"a": ["一只狗"], "b": ["狗"]}, tokenize="char", on_empty="error")


def test_empty_references():
    with pytest.raises(ValueError, match=r"1 reference is empty \(id#index: 7#1\)"):
        score({7: "a b", 8: "c"}, {7: ["a b", " "], 8: ["c"]})
    with pytest.raises(ValueError, match=r"1 id without any non-empty reference \(ids: 8\)"):
        score({7: "a b", 8: "c"}, {7: ["a b"], 8: []})
    with pytest.warns(MetricsWarning) as caught:
        r = compute_metrics(
            {7: "a b", 8: "c", 9: "d"}, {7: ["a b", ""], 8: [], 9: ["d"]}, metrics=NGRAM, on_missing="skip"
        )
    assert r.n_dropped_references == 1 and r.skipped == {"without_nonempty_references": [8]}
    assert any("dropped 1 empty reference" in str(w.message) for w in caught)
    assert list(r.per_sample) == [7, 9]


def test_bad_input_types_and_options():
    with pytest.raises(ValueError, match="prediction for id 1 is a int"):
        score({1: 5}, {1: ["a"]})
    with pytest.raises(ValueError, match="references for id 1 must be a list of strings"):
        score({1: "a"}, {1: [1, 2]})
    assert score({1: "a b"}, {1: "a b"}, metrics=("rouge_l",)).corpus["ROUGE-L"] == 1.0  # a lone string is fine
    with pytest.raises(ValueError, match="unknown metric 'spice'"):
        score({1: "a"}, {1: ["a"]}, metrics=("bleu", "spice"))
    with pytest.raises(ValueError, match="unknown tokenize mode"):
        score({1: "a"}, {1: ["a"]}, tokenize="spacy")
    with pytest.raises(ValueError, match="for Chinese use none, char or jieba"):
        score({1: "a"}, {1: ["a"]}, tokenize="ptb", lang="zh")
    with pytest.raises(ValueError, match="on_missing"):
        score({1: "a"}, {1: ["a"]}, on_missing="ignore")
    names = normalize_metric_names("BLEU, rouge-L,CIDEr-D,bert_score,bleu")
    assert names == ["bleu", "rouge_l", "cider", "bertscore"]
