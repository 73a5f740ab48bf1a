"""Tests for tippo_rl.data: loading ArtMuse- and COCO-style files, one test per bad-input case (each error names
the file, the row and the field), skip mode's counted warning, and the collator."""

from __future__ import annotations

import json
import logging
import re

import pytest
from PIL import Image

from tippo_rl import ColumnNames, load_artmuse, load_coco_captions, load_hf_dataset
from tippo_rl.data import DataValidationError, load_datasets
from tippo_rl.model_config import TIPPoModelConfig
from tippo_rl.script_arguments import TIPPoParser, TIPPoScriptArguments
from tippo_rl.trainer import TIPPoSFTConfig


GOOD = {"title": "in the garden", "images": ["a.png", "b.png"], "reference": "in the garden there is a red circle."}


@pytest.fixture
def folder(tmp_path):
    """A folder with two good images, a.png and b.png."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "b.png")
    return tmp_path


def write_jsonl(folder, lines) -> str:
    """Write rows (dicts, or raw strings written verbatim) to folder/data.jsonl; return its path."""
    path = folder / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- ArtMuse


def test_load_artmuse_demo_dataset(demo_dataset_dir):
    dataset = load_artmuse(demo_dataset_dir / "train.jsonl")
    assert len(dataset) == 24
    # The demo rows' own fields (place, shown_places, objects) are kept: reward plug-ins receive every column.
    assert set(dataset.column_names) == {
        "id",
        "title",
        "images",
        "reference",
        "references",
        "place",
        "shown_places",
        "objects",
    }
    row = dataset[0]
    assert row["id"] == "train-0"
    assert all(isinstance(image, Image.Image) for image in row["images"])
    assert row["references"] == [row["reference"]]


def test_relative_image_paths_start_from_image_root(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("jsonl_elsewhere")
    path = write_jsonl(other, [GOOD])
    with pytest.raises(DataValidationError, match="a.png' does not exist"):
        load_artmuse(path)
    dataset = load_artmuse(path, image_root=folder)
    assert len(dataset) == 1 and dataset[0]["id"] == "data-1"  # missing ids become '<file stem>-<line>'


def test_single_image_path_string_is_accepted(folder):
    dataset = load_artmuse(write_jsonl(folder, [{**GOOD, "images": "a.png"}]))
    assert len(dataset[0]["images"]) == 1


# One case per bad input: (what is wrong with line 2, the field the message must name, more of the message).
BAD_ROWS = {
    "missing image": ({**GOOD, "images": ["a.png", "nope.png"]}, "images", r"nope\.png' does not exist"),
    "corrupt image": ({**GOOD, "images": ["a.png", "corrupt.png"]}, "images", r"corrupt\.png' cannot be opened"),
    "empty title": ({**GOOD, "title": "  "}, "title", "is empty"),
    "empty reference": ({**GOOD, "reference": ""}, "reference", "is empty"),
    "missing reference": ({"title": "t", "images": ["a.png"]}, "reference", "is empty"),
    "too many images": ({**GOOD, "images": ["a.png"] * 6}, "images", "has 6 images, TIPPo takes 1 to 5"),
    "no images": ({**GOOD, "images": []}, "images", "has 0 images"),
    "images not a list": ({**GOOD, "images": 3}, "images", "expected a list of image paths"),
    "image path not a string": ({**GOOD, "images": ["a.png", 7]}, "images", "expected a list of image paths"),
    "title a number": ({**GOOD, "title": 42}, "title", "expected a string, got int"),
    "reference a list": ({**GOOD, "reference": ["x"]}, "reference", "expected a string, got list"),
    "references not strings": ({**GOOD, "references": [1, 2]}, "references", "expected a list of strings"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_raises_naming_file_line_and_field(folder, case):
    row, field, detail = BAD_ROWS[case]
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    path = write_jsonl(folder, [GOOD, row])
    with pytest.raises(DataValidationError, match=rf"{re.escape(str(path))}, line 2: field '{field}': .*{detail}"):
        load_artmuse(path)


def test_bad_row_that_is_not_json_or_not_an_object(folder):
    path = write_jsonl(folder, [GOOD, '{"title": "unterminated'])
    with pytest.raises(DataValidationError, match=rf"{re.escape(str(path))}, line 2: row: not valid JSON"):
        load_artmuse(path)
    path = write_jsonl(folder, [GOOD, "[1, 2]"])
    with pytest.raises(DataValidationError, match="line 2: row: expected a JSON object, got list"):
        load_artmuse(path)


def test_empty_title_is_allowed_when_asked(folder):
    dataset = load_artmuse(write_jsonl(folder, [{**GOOD, "title": ""}]), allow_empty_title=True)
    assert dataset[0]["title"] == ""


def test_empty_reference_is_allowed_for_inference_inputs(folder):
    dataset = load_artmuse(write_jsonl(folder, [{"title": "t", "images": ["a.png"]}]), require_reference=False)
    assert dataset[0]["reference"] == "" and dataset[0]["references"] == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl' does not exist"):
        load_artmuse(tmp_path / "nothing.jsonl")


def test_skip_mode_drops_bad_rows_and_counts_them(folder, caplog):
    (folder / "corrupt.png").write_bytes(b"garbage bytes, not a PNG")
    path = write_jsonl(
        folder,
        [
            GOOD,
            {**GOOD, "images": ["missing.png"]},
            {**GOOD, "images": ["corrupt.png"]},
            {**GOOD, "title": ""},
            "not json",
            "",  # blank lines are not rows
            {**GOOD, "reference": "the second good row."},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="tippo_rl.data"):
        dataset = load_artmuse(path, on_error="skip")
    assert dataset["reference"] == [GOOD["reference"], "the second good row."]
    assert dataset["id"] == ["data-1", "data-7"]  # ids keep the line numbers of the file
    [record] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert f"{path}: skipped 4 bad rows" in record.getMessage()
    assert "2× field 'images'" in record.getMessage() and "1× field 'title'" in record.getMessage()
    assert "1× row" in record.getMessage()


def test_skip_mode_with_no_good_rows_raises(folder):
    path = write_jsonl(folder, [{**GOOD, "title": ""}])
    with pytest.raises(DataValidationError, match="no usable rows"):
        load_artmuse(path, on_error="skip")


def test_unknown_on_error_value(folder):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        load_artmuse(write_jsonl(folder, [GOOD]), on_error="ignore")


# -------------------------------------------------------------------------------------------------- COCO


def write_coco(folder, annotations, images=None):
    path = folder / "captions.json"
    images = images or [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False))
    return path


COCO_CAPTIONS = [
    {"image_id": 1, "caption": "一个红色的方形。"},
    {"image_id": 1, "caption": "红色方块。"},
    {"image_id": 2, "caption": "一个蓝色的方形。"},
]


def test_load_coco_one_row_per_caption_or_image(folder):
    path = write_coco(folder, COCO_CAPTIONS)
    per_caption = load_coco_captions(path, folder)
    assert per_caption["reference"] == ["一个红色的方形。", "红色方块。", "一个蓝色的方形。"]
    assert per_caption["title"] == ["", "", ""]
    assert [len(images) for images in per_caption["images"]] == [1, 1, 1]
    per_image = load_coco_captions(path, folder, one_row_per="image")
    assert per_image["reference"] == ["一个红色的方形。", "一个蓝色的方形。"]
    assert per_image["references"] == [["一个红色的方形。", "红色方块。"], ["一个蓝色的方形。"]]


@pytest.mark.parametrize(
    "annotations, message",
    [
        ([{"image_id": 9, "caption": "x"}], r"annotations\[0\] refers to image_id 9, which is not in 'images'"),
        ([COCO_CAPTIONS[0], {"image_id": 2, "caption": " "}], r"annotations\[1\] field 'caption' is empty"),
        ([{"image_id": 2, "caption": None}], r"annotations\[0\] field 'caption' is empty or not a string"),
        ([{"caption": "x"}], r"annotations\[0\] refers to image_id None"),
    ],
)
def test_coco_bad_annotation(folder, annotations, message):
    path = write_coco(folder, annotations)
    with pytest.raises(DataValidationError, match=rf"{re.escape(str(path))}: {message}"):
        load_coco_captions(path, folder)


def test_coco_missing_image_file(folder, caplog):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}]
    path = write_coco(folder, COCO_CAPTIONS, images)
    with pytest.raises(
        DataValidationError, match=r"image_id 2: field 'file_name': image '.*gone\.png' does not exist"
    ):
        load_coco_captions(path, folder)
    with caplog.at_level(logging.WARNING, logger="tippo_rl.data"):
        dataset = load_coco_captions(path, folder, on_error="skip")
    assert dataset["reference"] == ["一个红色的方形。", "红色方块。"]
    assert "skipped 1 bad rows" in caplog.text


def test_coco_not_a_captions_file_or_missing(folder):
    path = folder / "captions.json"
    path.write_text('{"annotations": []}')
    with pytest.raises(DataValidationError, match="not a COCO captions file"):
        load_coco_captions(path, folder)
    with pytest.raises(FileNotFoundError, match="annotation file"):
        load_coco_captions(folder / "none.json", folder)
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_coco_captions(path, folder / "no_such_dir")


# -- files that are not what they claim (issue 12) ----------------------------------------------------


def truncated_jpeg(folder, name="cut.jpg"):
    Image.new("RGB", (64, 64), "green").save(folder / "whole.jpg")
    image = Image.effect_noise((256, 256), 64).convert("RGB")
    image.save(folder / name, quality=95)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    return folder / name


def test_truncated_jpeg_is_a_bad_row_named_by_file_or_skipped(folder, caplog):
    truncated_jpeg(folder)
    path = write_jsonl(folder, [GOOD, {**GOOD, "images": ["a.png", "cut.jpg"]}])
    with pytest.raises(
        DataValidationError,
        match=r"data\.jsonl, line 2: field 'images': image '.*cut\.jpg' cannot be opened: image file is truncated",
    ):
        load_artmuse(path)
    with caplog.at_level(logging.WARNING, logger="tippo_rl.data"):
        assert len(load_artmuse(path, on_error="skip")) == 1
    assert "skipped 1 bad rows (1× field 'images')" in caplog.text and "--on_bad_rows raise" in caplog.text


def test_an_image_damaged_after_validation_is_named_with_its_sample_when_decoded(
    folder, tiny_model_and_processor, tmp_path
):
    from tippo_rl.feature_cache import cache_frozen_features

    model, processor = tiny_model_and_processor
    Image.effect_noise((64, 64), 64).convert("RGB").save(folder / "later.jpg", quality=95)
    dataset = load_artmuse(write_jsonl(folder, [{**GOOD, "id": "row-a", "images": ["later.jpg"]}]))
    data = (folder / "later.jpg").read_bytes()
    (folder / "later.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataValidationError, match=r"sample 'row-a': image '.*later\.jpg' cannot be opened: image file is truncated"
    ):
        cache_frozen_features(dataset, model, processor, tmp_path / "cache")


def test_a_folder_given_as_an_image_is_called_a_folder(folder):
    (folder / "album").mkdir()
    path = write_jsonl(folder, [{**GOOD, "images": ["album"]}])
    with pytest.raises(
        DataValidationError, match=r"line 1: field 'images': image '.*album' is a folder, not an image file"
    ):
        load_artmuse(path)


def test_a_line_that_is_not_utf8_is_a_bad_row_naming_file_line_and_byte(folder):
    path = folder / "data.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n"
        + json.dumps({**GOOD, "title": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
        + b"\n"
    )
    with pytest.raises(
        DataValidationError, match=rf"{re.escape(str(path))}, line 2: row: not UTF-8 text \(byte 0xe9 at column \d+\)"
    ):
        load_artmuse(path)
    assert len(load_artmuse(path, on_error="skip")) == 1


def test_a_utf8_byte_order_mark_is_accepted(folder):
    path = folder / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert load_artmuse(path)[0]["title"] == GOOD["title"]


def test_messages_name_the_command_line_options(folder):
    path = write_jsonl(folder, [{**GOOD, "title": ""}])
    with pytest.raises(DataValidationError, match=r"--allow_empty_title true"):
        load_artmuse(path)

    assert TIPPoScriptArguments(allow_empty_title=True).allow_empty_title


def test_a_huge_image_is_decoded_at_a_reduced_size(folder):
    from tippo_rl.processing_tippo import open_image

    Image.effect_noise((512, 384), 64).convert("RGB").save(folder / "big.jpg")
    Image.effect_noise((512, 384), 64).convert("RGB").save(folder / "big.png")
    assert open_image(folder / "big.jpg", max_pixels=64 * 64).size == (64, 48)  # 1/8: at most max_pixels
    assert open_image(folder / "big.jpg", max_pixels=200 * 200).size == (128, 96)  # 1/4: the largest scale that fits
    assert open_image(folder / "big.jpg").size == (512, 384)  # under the bound: decoded as datasets decodes it
    assert open_image(folder / "big.png", max_pixels=64 * 64).size == (74, 55)  # PNG: reduced by 7 once decoded


# ---------------------------------------------------------------------------------------------- extra fields, HF datasets


def test_extra_jsonl_fields_are_kept_and_missing_ones_are_none(folder):
    dataset = load_artmuse(write_jsonl(folder, [{**GOOD, "style": "ink", "score": 3}, GOOD]))
    assert dataset["style"] == ["ink", None] and dataset["score"] == [3, None]


def hf_rows(folder, n=3):
    """Rows as a TRL user keeps them: one decoded image, the target in `text`, the title in `name`, an extra column."""
    return {
        "name": [f"title {i}" for i in range(n)],
        "image": [Image.open(folder / "a.png")] * n,
        "text": [f"a red square number {i}." for i in range(n)],
        "style": ["ink"] * n,
    }


MAPPED = ColumnNames(title="name", images="image", reference="text")


def test_save_to_disk_folder_with_an_image_column_and_mapped_columns(folder, tmp_path):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    features = Features(
        {"name": Value("string"), "image": ImageFeature(), "text": Value("string"), "style": Value("string")}
    )
    splits = DatasetDict(
        {
            "train": Dataset.from_dict(hf_rows(folder), features=features),
            "test": Dataset.from_dict(hf_rows(folder, 1), features=features),
        }
    )
    splits.save_to_disk(tmp_path / "saved")
    dataset = load_hf_dataset(str(tmp_path / "saved"), "train", columns=MAPPED)
    assert (
        len(dataset) == 3 and dataset[1]["title"] == "title 1" and dataset[1]["reference"] == "a red square number 1."
    )
    assert len(dataset[0]["images"]) == 1 and isinstance(dataset[0]["images"][0], Image.Image)
    assert (
        dataset["style"] == ["ink"] * 3
        and dataset[0]["id"] == "train-0"
        and dataset[0]["references"] == [dataset[0]["reference"]]
    )
    assert len(load_hf_dataset(str(tmp_path / "saved"), "test", columns=MAPPED)) == 1
    with pytest.raises(DataValidationError, match="has no split 'validation'; its splits: train, test"):
        load_hf_dataset(str(tmp_path / "saved"), "validation", columns=MAPPED)


def test_a_misnamed_column_is_named_with_the_columns_found(folder, tmp_path):
    from datasets import Dataset

    Dataset.from_dict(hf_rows(folder)).save_to_disk(tmp_path / "saved")
    with pytest.raises(
        DataValidationError,
        match=r"no column 'reference' for the reference \(--reference_column\); its columns: name, image, text, style",
    ):
        load_hf_dataset(str(tmp_path / "saved"), columns=ColumnNames(title="name", images="image"))
    with pytest.raises(DataValidationError, match=r"no column 'images' for the images \(--images_column\)"):
        load_hf_dataset(str(tmp_path / "saved"), columns=ColumnNames(title="name", reference="text"))


def test_jsonl_and_parquet_files_with_paths_and_lists_of_images(folder):
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    path = write_jsonl(folder, [{**GOOD, "style": "ink"}])
    dataset = load_hf_dataset(str(path), image_root=folder)  # relative paths start from image_root
    assert dataset[0]["title"] == GOOD["title"] and len(dataset[0]["images"]) == 2 and dataset["style"] == ["ink"]
    features = Features({"title": Value("string"), "images": List(ImageFeature()), "reference": Value("string")})
    rows = {"title": ["t"], "images": [[str(folder / "a.png"), str(folder / "b.png")]], "reference": ["r"]}
    Dataset.from_dict(rows, features=features).to_parquet(folder / "data.parquet")
    dataset = load_hf_dataset(str(folder / "data.parquet"))
    assert len(dataset[0]["images"]) == 2 and dataset[0]["images"][1].getpixel((0, 0)) == (0, 0, 255)


def test_imagefolder_with_metadata(folder):
    rows = [
        {"file_name": "a.png", "text": "a red square.", "title": "red"},
        {"file_name": "b.png", "text": "a blue one.", "title": "blue"},
    ]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    dataset = load_hf_dataset(str(folder), columns=ColumnNames(images="image", reference="text"))
    assert sorted(dataset["reference"]) == ["a blue one.", "a red square."] and len(dataset[0]["images"]) == 1


def test_hf_rows_are_validated_like_jsonl_rows(folder, tmp_path, caplog):
    from datasets import Dataset

    rows = {
        "title": ["t", "t", ""],
        "images": [[str(folder / "a.png")], [str(folder / "nope.png")], [str(folder / "a.png")]],
        "text": ["r", "r", "r"],
    }
    Dataset.from_dict(rows).save_to_disk(tmp_path / "saved")
    columns = ColumnNames(reference="text")
    with pytest.raises(
        DataValidationError, match=r"split 'train', row 1: field 'images': image .*nope.png' does not exist"
    ):
        load_hf_dataset(str(tmp_path / "saved"), columns=columns)
    with caplog.at_level(logging.WARNING):
        dataset = load_hf_dataset(str(tmp_path / "saved"), columns=columns, on_error="skip")
    assert len(dataset) == 1 and "skipped 2 bad rows" in caplog.text


def test_a_column_that_a_mapping_would_overwrite_is_refused(folder, tmp_path):
    from datasets import Dataset

    Dataset.from_dict({**hf_rows(folder), "reference": ["x"] * 3}).save_to_disk(tmp_path / "saved")
    with pytest.raises(DataValidationError, match="read from column 'text', but there is also a column 'reference'"):
        load_hf_dataset(str(tmp_path / "saved"), columns=MAPPED)


def test_an_unreadable_dataset_name_says_so(tmp_path):
    with pytest.raises(DataValidationError, match="dataset 'no-such-org/no-such-dataset' cannot be loaded"):
        load_hf_dataset("no-such-org/no-such-dataset")


def test_dataset_name_with_column_options_loads_train_and_test_splits(tmp_path, demo_dataset_dir):
    from datasets import DatasetDict

    splits = DatasetDict(
        {
            "train": load_artmuse(demo_dataset_dir / "train.jsonl"),
            "test": load_artmuse(demo_dataset_dir / "test.jsonl"),
        }
    )
    splits = splits.rename_columns({"reference": "text", "title": "name"}).remove_columns("references")
    splits.save_to_disk(tmp_path / "saved")
    config = tmp_path / "config.yaml"
    config.write_text("dataset: demo\nmax_steps: 3\n")  # the YAML's dataset gives way to --dataset_name
    script_args, _, _ = TIPPoParser((TIPPoScriptArguments, TIPPoSFTConfig, TIPPoModelConfig)).parse_args_and_config(
        args=[
            "--config",
            str(config),
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--dataset_name",
            str(tmp_path / "saved"),
            "--reference_column",
            "text",
            "--title_column",
            "name",
            "--dataset_test_split",
            "test",
        ]
    )
    assert script_args.dataset == "hf" and script_args.dataset_id == str(tmp_path / "saved")
    train, evaluation = load_datasets(script_args)
    assert len(train) == 24 and len(evaluation) == 8
    assert train[0]["reference"] == splits["train"][0]["text"] and train[0]["place"] == splits["train"][0]["place"]
    script_args.dataset_test_split = "validation"  # a dataset without that split: no evaluation data
    assert load_datasets(script_args)[1] is None
    script_args.reference_column = "caption"
    with pytest.raises(
        DataValidationError, match="no column 'caption' for the reference .*; its columns: id, name, images, text"
    ):
        load_datasets(script_args)
