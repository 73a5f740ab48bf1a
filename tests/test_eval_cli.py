"""Tests for the tippo-eval command line (tippo_rl.evaluation.cli): input formats, output, per-sample file, errors.

The CLI is run in-process through ``main([...])`` and once as ``python -m tippo_rl.evaluation.cli``. Only the n-gram
metrics are used here (no JVM); METEOR and BERTScore are covered in test_metrics.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tippo_rl.evaluation import compute_metrics  # noqa: E402
from tippo_rl.evaluation.cli import main  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
NGRAM = "bleu,rouge_l,cider"

PREDS = {1: "一只 狗 在 草地 上 奔跑", 2: "两 个 男人 在 街上 走", 3: "一个 女人 拿着 伞"}
REFS = {
    1: ["一只 狗 在 草地 上 奔跑", "草地 上 有 一只 狗"],
    2: ["两个 男人 走 在 街道 上"],
    3: ["一个 女人 撑着 伞 走路", "女人 拿着 雨伞"],
}


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def jsonl_files(tmp_path):
    preds = write_jsonl(tmp_path / "preds.jsonl", [{"id": k, "prediction": v} for k, v in PREDS.items()])
    # id 3 as one row per caption with "reference": str, the others as lists; rows with one id are merged.
    ref_rows = [{"id": 1, "references": REFS[1]}, {"id": 2, "references": REFS[2]}]
    ref_rows += [{"id": 3, "reference": r} for r in REFS[3]]
    refs = write_jsonl(tmp_path / "refs.jsonl", ref_rows)
    return preds, refs


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jsonl_scores_and_per_sample_file(jsonl_files, tmp_path, capsys):
    preds, refs = jsonl_files
    per_sample = tmp_path / "per_sample.jsonl"
    code, out, err = run_main(
        capsys, "--predictions", preds, "--references", refs, "--metrics", NGRAM, "--per-sample", str(per_sample)
    )
    assert code == 0, err
    assert out.count("\n") == 1  # one JSON object, one line
    got = json.loads(out)
    expected = compute_metrics(PREDS, REFS, metrics=NGRAM.split(","))
    for name, value in expected.corpus.items():
        assert got[name] == pytest.approx(value, abs=1e-12)
    assert got["tokenize"] == "none" and got["lang"] == "zh" and got["n_samples"] == 3
    assert "METEOR" not in got and got["n_empty_predictions"] == 0

    rows = [json.loads(line) for line in per_sample.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]  # ids as written in the predictions file
    assert rows[0]["ROUGE-L"] == 1.0
    assert rows[2]["CIDEr"] == pytest.approx(expected.per_sample[3]["CIDEr"])


def test_coco_json_formats_give_the_same_scores(jsonl_files, tmp_path, capsys):
    results = [{"image_id": k, "caption": v} for k, v in PREDS.items()]
    annotations = {
        "images": [{"id": k, "file_name": f"{k}.jpg"} for k in REFS],
        "annotations": [
            {"id": i, "image_id": k, "caption": c}
            for i, (k, c) in enumerate((k, c) for k, cs in REFS.items() for c in cs)
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(results, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "captions.json").write_text(json.dumps(annotations, ensure_ascii=False, indent=1), encoding="utf-8")
    code, out, err = run_main(
        capsys, "-p", str(tmp_path / "results.json"), "-r", str(tmp_path / "captions.json"), "--metrics", NGRAM
    )
    assert code == 0, err
    coco = json.loads(out)

    code, out, _ = run_main(capsys, "-p", jsonl_files[0], "-r", jsonl_files[1], "--metrics", NGRAM)
    assert json.loads(out) == coco

    # The bare annotation list works too: its rows' "id" is the annotation's, the image is "image_id".
    (tmp_path / "anns.json").write_text(json.dumps(annotations["annotations"]), encoding="utf-8")
    code, out, err = run_main(
        capsys, "-p", str(tmp_path / "results.json"), "-r", str(tmp_path / "anns.json"), "--metrics", NGRAM
    )
    assert code == 0 and json.loads(out) == coco, err

    # A plain JSON object id -> text / id -> references works too; ids match across int and str.
    (tmp_path / "p.json").write_text(json.dumps({str(k): v for k, v in PREDS.items()}), encoding="utf-8")
    code, out, _ = run_main(capsys, "-p", str(tmp_path / "p.json"), "-r", jsonl_files[1], "--metrics", NGRAM)
    assert code == 0 and json.loads(out) == coco


def test_char_tokenisation_and_english(tmp_path, capsys):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "一只狗"}, {"id": "b", "prediction": "dog"}])
    refs = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "references": ["一只猫"]}, {"id": "b", "reference": "dog"}])
    code, out, err = run_main(capsys, "-p", preds, "-r", refs, "--metrics", "rouge_l", "--tokenize", "char")
    assert code == 0, err
    got = json.loads(out)
    assert got["ROUGE-L"] == pytest.approx((2 / 3 + 1) / 2) and got["tokenize"] == "char"
    code, out, _ = run_main(capsys, "-p", preds, "-r", refs, "--metrics", "rouge_l", "--lang", "en")
    assert json.loads(out)["lang"] == "en"


def test_module_entry_point_in_a_subprocess(jsonl_files):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tippo_rl.evaluation.cli",
            "-p",
            jsonl_files[0],
            "-r",
            jsonl_files[1],
            "--metrics",
            NGRAM,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)  # stdout holds exactly the JSON object
    assert set(got) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "tokenize", "lang", "n_samples"}
    assert got["n_samples"] == 3


# ---------------------------------------------------------------------------------------------------- errors


def assert_one_line_error(code, out, err, *fragments):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tippo-eval: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_mismatched_ids_exit_2_naming_them(tmp_path, capsys):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prediction": "a"}, {"id": 17, "prediction": "b"}])
    refs = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "references": ["a"]}, {"id": 4, "references": ["c"]}])
    code, out, err = run_main(capsys, "-p", preds, "-r", refs, "--metrics", NGRAM)
    assert_one_line_error(
        code, out, err, "without references (ids: '17')", "without a prediction (ids: '4')", "--on-missing skip"
    )

    code, out, err = run_main(capsys, "-p", preds, "-r", refs, "--metrics", "bleu", "--on-missing", "skip")
    assert code == 0 and json.loads(out)["n_samples"] == 1 and json.loads(out)["n_skipped"] == 2
    assert err.count("tippo-eval: warning: skipped") == 1


def test_empty_prediction_warns_or_fails(tmp_path, capsys):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prediction": "a b"}, {"id": 2, "prediction": ""}])
    refs = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "references": ["a b"]}, {"id": 2, "references": ["c d"]}])
    code, out, err = run_main(capsys, "-p", preds, "-r", refs, "--metrics", NGRAM)
    assert code == 0 and json.loads(out)["n_empty_predictions"] == 1
    assert "tippo-eval: warning: 1 prediction is empty" in err

    code, out, err = run_main(capsys, "-p", preds, "-r", refs, "--metrics", NGRAM, "--on-empty", "error")
    assert_one_line_error(code, out, err, "1 prediction is empty (ids: '2')")


def test_bad_files_exit_2_with_a_message(tmp_path, capsys):
    good = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "references": ["a"]}])
    code, out, err = run_main(capsys, "-p", str(tmp_path / "missing.jsonl"), "-r", good, "--metrics", "bleu")
    assert_one_line_error(code, out, err, "missing.jsonl: no such file")

    (tmp_path / "broken.jsonl").write_text('{"id": 1, "prediction": "a"}\n{"id": 2, "prediction": \n')
    code, out, err = run_main(capsys, "-p", str(tmp_path / "broken.jsonl"), "-r", good, "--metrics", "bleu")
    assert_one_line_error(code, out, err, "broken.jsonl line 2")

    no_text = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "text": "a"}])
    code, out, err = run_main(capsys, "-p", no_text, "-r", good, "--metrics", "bleu")
    assert_one_line_error(code, out, err, "line 1: no 'prediction'")

    twice = write_jsonl(tmp_path / "p2.jsonl", [{"id": 1, "prediction": "a"}, {"id": 1, "prediction": "b"}])
    code, out, err = run_main(capsys, "-p", twice, "-r", good, "--metrics", "bleu")
    assert_one_line_error(code, out, err, "id 1 has a second prediction")


def test_bad_arguments_exit_2(jsonl_files, capsys):
    preds, refs = jsonl_files
    for argv in (
        ["-p", preds, "-r", refs, "--metrics", "bleu,spice"],
        ["-p", preds, "-r", refs, "--tokenize", "spacy"],
        ["-p", preds, "-r", refs, "--metrics", "bleu", "--bertscore-model", "bert-base-chinese"],
        ["-p", preds],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "unknown metric 'spice'" in capsys.readouterr().err
