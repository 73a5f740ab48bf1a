"""Your own captions and photos, end to end: a small COCO-format set made here (real photos from scikit-image and
scikit-learn, separate train/val folders and annotation files, several English captions per image) through SFT →
PolishPPO → evaluation with the coco_*.yaml configs, as a user runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from recipe_loading import load_recipe
from trl import TrlParser

from tippo_rl.data import DataValidationError, load_datasets
from tippo_rl.evaluation import EvaluateArguments, EvaluationArguments
from tippo_rl.feature_cache import undecoded_images
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.modeling_tippo import image_keys, prototype_contrastive_loss, same_image
from tippo_rl.presets import train_word_tokenizer
from tippo_rl.script_arguments import TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig
from tippo_rl.trainer.polishppo_config import PolishPPOConfig


skimage_data = pytest.importorskip("skimage.data", reason="scikit-image bundles the photos (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes/configs"
# image → its captions; the first four are the training photos, the last two the validation photos.
CAPTIONS = {
    "astronaut": ["A woman in a space suit smiles.", "An astronaut poses with a flag.", "A smiling astronaut."],
    "coffee": ["A cup of coffee on a saucer.", "A white cup of coffee.", "Coffee in a cup on a table."],
    "chelsea": ["A cat looks at the camera.", "An orange cat sits.", "A small cat with stripes."],
    "rocket": ["A rocket on a launch pad.", "A rocket stands under a blue sky.", "A tall white rocket."],
    "camera": ["A man with a camera on a field.", "A photographer with a camera."],
    "china": ["A temple under a blue sky.", "An old temple with trees."],
}
TRAIN, VAL = list(CAPTIONS)[:4], list(CAPTIONS)[4:]


def photo(name: str) -> Image.Image:
    if name == "china":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image("china.jpg"))
    return Image.fromarray(getattr(skimage_data, name)())


def write_coco_split(root: Path, split: str, names: list[str], first_id: int) -> tuple[Path, Path]:
    """COCO's layout: `<split>2017/<12-digit id>.jpg` and `annotations/captions_<split>2017.json`."""
    folder, annotations = root / f"{split}2017", root / "annotations" / f"captions_{split}2017.json"
    folder.mkdir(parents=True)
    annotations.parent.mkdir(exist_ok=True)
    images, captions = [], []
    for offset, name in enumerate(names):
        image_id = first_id + offset
        file_name = f"{image_id:012d}.jpg"
        photo(name).convert("RGB").save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name})
        captions += [{"id": len(captions), "image_id": image_id, "caption": text} for text in CAPTIONS[name]]
    annotations.write_text(json.dumps({"images": images, "annotations": captions}))
    return annotations, folder


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    train = write_coco_split(root, "train", TRAIN, 1)
    val = write_coco_split(root, "val", VAL, 100)
    return {"root": root, "train": train, "val": val}


def coco_options(coco, evaluation: bool = True) -> list[str]:
    (train_file, train_dir), (val_file, val_dir) = coco["train"], coco["val"]
    options = ["--coco_train_annotations", str(train_file), "--coco_image_dir", str(train_dir)]
    if evaluation:
        options += ["--coco_eval_annotations", str(val_file), "--coco_eval_image_dir", str(val_dir)]
    return options


def words_of(texts) -> set[str]:
    return {word for text in texts for word in re.findall(r"\w+", text.lower())}


# -- each split reads its own folder -----------------------------------------------------------------------


def test_each_coco_split_reads_its_own_image_folder(coco):
    script_args = TIPPoScriptArguments(
        dataset="coco", **dict(zip(*[iter(o.lstrip("-") for o in coco_options(coco))] * 2))
    )
    train, evaluation = load_datasets(script_args)
    assert {Path(row[0]["path"]).parent.name for row in undecoded_images(train)["images"]} == {"train2017"}
    assert {Path(row[0]["path"]).parent.name for row in undecoded_images(evaluation)["images"]} == {"val2017"}
    assert len(train) == sum(len(CAPTIONS[name]) for name in TRAIN) and len(evaluation) == len(VAL)
    # The evaluation file alone is enough to evaluate: the training file is neither needed nor read.
    only_eval = TIPPoScriptArguments(
        dataset="coco", coco_eval_annotations=str(coco["val"][0]), coco_eval_image_dir=str(coco["val"][1])
    )
    assert load_datasets(only_eval, splits=("eval",))[1]["references"] == [CAPTIONS[name] for name in VAL]
    with pytest.raises(DataValidationError, match="set --coco_train_annotations, the train data to train on"):
        load_datasets(only_eval)
    # One folder for both (the old way) names the missing image of the other split.
    wrong = TIPPoScriptArguments(
        dataset="coco",
        coco_train_annotations=str(coco["train"][0]),
        coco_image_dir=str(coco["train"][1]),
        coco_eval_annotations=str(coco["val"][0]),
    )
    with pytest.raises(
        DataValidationError, match=r"captions_val2017.json: image_id 100: .*train2017/000000000100.jpg"
    ):
        load_datasets(wrong)


# -- the tiny preset speaks the data's words ------------------------------------------------------------------


def test_the_word_tokenizer_gives_the_text_back_and_only_knows_the_corpus_words():
    texts = [caption for name in TRAIN for caption in CAPTIONS[name]] + ["一只猫坐在桌子上。"]
    tokenizer = train_word_tokenizer(texts)
    for text in texts:
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("A bicycle.")["input_ids"]) == ["▁A", "<unk>", ".", "</s>"]
    assert train_word_tokenizer(list(reversed(texts))).get_vocab() == tokenizer.get_vocab()  # order-independent


# -- copies of an image in a batch --------------------------------------------------------------------------


def test_copies_of_an_image_in_a_batch_are_not_its_negatives():
    """Five captions per image put copies of it in a batch. With the copies' keys, L_C of [X, X, Y] and [Y, Y, X]
    average to L_C of [X, Y] (each copy sees the batch as if it held the image once); without, they are negatives."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 2, 2, 8, generator=generator), torch.randn(1, 2, 2, 8, generator=generator)
    mask = torch.ones(1, 2, dtype=torch.bool)

    def loss(*samples, keyed=True):
        signals = torch.cat(samples)
        keys = image_keys(signals) if keyed else None
        return prototype_contrastive_loss(signals, mask.expand(len(samples), 2), keys=keys)

    once = loss(x, y)
    torch.testing.assert_close((loss(x, x, y) + loss(y, y, x)) / 2, once)
    assert (loss(x, x, y, keyed=False) + loss(y, y, x, keyed=False)) / 2 > once + 0.1
    pixels = torch.randn(3, 2, 3, 4, 4, generator=generator)
    pixels[2, 1] = pixels[0, 0]
    keys = image_keys(pixels).flatten()
    assert same_image(keys, keys).sum() == 6 + 2  # the diagonal and the one pair of copies


# -- SFT → PolishPPO → evaluation, with the coco configs ------------------------------------------------------


def test_sft_polishppo_evaluate_on_a_coco_format_set_of_real_photos(coco, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = ["--feature_cache_dir", str(tmp_path / "cache")]
    sft = load_recipe("sft")
    script_args, training_args, model_args = TrlParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig)).parse_args_and_config(
        args=["--config", str(CONFIGS / "coco_sft.yaml"), *coco_options(coco, evaluation=False), *cache,
              "--output_dir", str(tmp_path / "sft"), "--max_steps", "60", "--per_device_train_batch_size", "8",
              "--save_strategy", "no", "--disable_tqdm", "true"]
    )  # fmt: skip
    trainer = sft.main(script_args, training_args, model_args)
    vocabulary = trainer.processing_class.tokenizer.get_vocab()
    training_words = words_of(caption for name in TRAIN for caption in CAPTIONS[name])
    assert {token.lstrip("▁").lower() for token in vocabulary if token not in ("<pad>", "</s>", "<unk>")} <= (
        training_words | {".", ",", ""}
    )
    contrastive = [entry["loss/contrastive"] for entry in trainer.state.log_history if "loss/contrastive" in entry]
    # Batches of 8 from 4 images hold each image about twice; copies share one denominator term, so L_C falls.
    assert contrastive[-1] < contrastive[0]

    polishppo = load_recipe("polishppo")
    script_args, training_args, model_args = TrlParser((TIPPoScriptArguments, PolishPPOConfig, TIPPoModelConfig)).parse_args_and_config(
        args=["--config", str(CONFIGS / "coco_polishppo.yaml"), *coco_options(coco, evaluation=False), *cache,
              "--model_name_or_path", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "rl"),
              "--total_iterations", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no",
              "--disable_tqdm", "true"]
    )  # fmt: skip
    polishppo.main(script_args, training_args, model_args)

    evaluate = load_recipe("evaluate")
    script_args, models, evaluation = TrlParser((TIPPoScriptArguments, EvaluateArguments, EvaluationArguments)).parse_args_and_config(
        args=["--config", str(CONFIGS / "coco_evaluate.yaml"), "--coco_eval_annotations", str(coco["val"][0]),
              "--coco_eval_image_dir", str(coco["val"][1]), "--models", f"SFT={tmp_path / 'sft'}",
              f"SFT + PolishPPO={tmp_path / 'rl'}", "--output_dir", str(tmp_path / "eval"),
              "--metrics", "bleu", "rouge_l", "cider"]
    )  # fmt: skip
    evaluate.main(script_args, models, evaluation)
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["settings"]["evaluation"]["lang"] == "en" and evaluation.tokenize in ("ptb", "char")
    for name in ("SFT", "SFT + PolishPPO"):
        rows = [json.loads(line) for line in (tmp_path / "eval" / metrics["models"][name]["predictions"]).open()]
        assert len(rows) == len(VAL)
        predicted = words_of(row["prediction"] for row in rows)
        assert predicted and predicted <= training_words, predicted - training_words
