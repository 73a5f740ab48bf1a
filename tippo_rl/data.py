"""Datasets for TIPPo: ArtMuse-style JSONL, COCO-CN-style captions and any Hugging Face dataset (hub id, `save_to_disk`
folder, or files `datasets.load_dataset` reads), validated at load time.

Every row becomes `{id, title, images, reference, references}` in a `datasets.Dataset` whose `images`
column is a list of `datasets.Image()`; every other column of the source is kept as it is (reward plug-ins receive
it). Bad rows raise an error naming the file, row and field, or — with
`on_error="skip"` (`--on_bad_rows skip` in the recipes) — are dropped with a counted warning. Nothing is dropped
silently. Every image is decoded once when its row is checked (JPEG at 1/8 scale: cheap), so a truncated file is a bad
row, not a crash later in training.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import PartialState
from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_dataset, load_from_disk
from PIL import Image as PILImage

from .demo.scenes import make_demo_dataset
from .errors import DataValidationError
from .processing_tippo import open_image


if TYPE_CHECKING:
    from .script_arguments import TIPPoScriptArguments


logger = logging.getLogger(__name__)

FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "images": List(Image()),
        "reference": Value("string"),
        "references": List(Value("string")),
    }
)


# Every image is decoded to its end when its row is checked (a truncated or corrupt file fails here, not in training),
# at the smallest size it can: a JPEG at 1/8 scale reads every byte at a fraction of the cost and memory.
CHECK_PIXELS = 1


def _finish(
    rows: list[dict], problems: Counter, source: str, on_error: str, extra_features: Features | None = None
) -> Dataset:
    if problems:
        logger.warning(
            "%s: skipped %d bad rows (%s); to stop at the first one and see its line, use --on_bad_rows raise "
            "(on_error='raise' in Python)",
            source,
            sum(problems.values()),
            ", ".join(f"{count}× {kind}" for kind, count in problems.most_common()),
        )
    if not rows:
        raise DataValidationError(f"{source}: no usable rows")
    extras = list(dict.fromkeys(name for row in rows for name in row if name not in FEATURES))
    for row in rows:  # a field some rows lack is None there (datasets takes its columns from the first row)
        for name in extras:
            row.setdefault(name, None)
    features = Features({**FEATURES, **(extra_features or {})})
    missing = [name for name in extras if name not in features]
    if missing:  # JSONL extras: their types as datasets infers them
        features.update(Dataset.from_list([{name: row[name] for name in missing} for row in rows]).features)
    return Dataset.from_list(rows, features=features)


def _keep_or_count(
    rows: list[dict],
    problems: Counter,
    clean: dict | None,
    problem: str | None,
    default_id: str,
    where: str,
    on_error: str,
) -> None:
    """What a loader does with a row `validate_row` checked: a good one joins `rows` (`default_id` if it has none);
    a bad one raises `DataValidationError` naming `where` (`on_error="raise"`), or is counted by kind in `problems`
    (`"skip"`)."""
    if problem is None:
        clean["id"] = clean["id"] or default_id
        rows.append(clean)
        return
    message = f"{where}: {problem}"
    if on_error == "raise":
        raise DataValidationError(message)
    logger.debug(message)
    problems[problem.split(":")[0]] += 1


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


@dataclass(frozen=True)
class ColumnNames:
    """Where a source keeps each TIPPo field (`--title_column`, `--images_column`, `--reference_column`); messages name
    the source's column."""

    title: str = "title"
    images: str = "images"
    reference: str = "reference"


def _is_image(value: Any) -> bool:
    return isinstance(value, (str, PILImage.Image)) or (
        isinstance(value, dict) and bool(value.get("bytes") or value.get("path"))
    )


def _checked_image(image: Any, image_root: Path) -> Any:
    """A row's image as the `images` column stores it (a full path, a `{bytes, path}` dict or a PIL image), after
    checking that it decodes; `ValueError` with the reason if it does not."""
    if isinstance(image, PILImage.Image):
        return image  # decoded already
    if isinstance(image, dict) and image.get("bytes"):
        open_image(image, max_pixels=CHECK_PIXELS)
        return {"bytes": image["bytes"], "path": image.get("path")}
    path = image["path"] if isinstance(image, dict) else image
    full = Path(path) if Path(path).is_absolute() else image_root / path
    open_image(full, max_pixels=CHECK_PIXELS)
    return str(full)


def validate_row(
    row: Any,
    image_root: Path,
    max_images: int,
    allow_empty_title: bool,
    require_reference: bool,
    columns: ColumnNames = ColumnNames(),
) -> tuple[dict, str | None]:
    """Check one row; return (clean row, None) or (None, 'field: problem'). The clean row holds `id`, `title`,
    `images`, `reference`, `references` and every other field of `row` unchanged."""
    if not isinstance(row, dict):
        return None, f"row: expected a JSON object, got {type(row).__name__}"
    title = row.get(columns.title, "")
    if title is None and allow_empty_title:
        title = ""
    if not isinstance(title, str):
        return None, f"field '{columns.title}': expected a string, got {type(title).__name__}"
    if not title.strip() and not allow_empty_title:
        return None, (
            f"field '{columns.title}': is empty (for captioning data without titles use --allow_empty_title true, "
            "allow_empty_title=True in Python)"
        )
    images = row.get(columns.images)
    if _is_image(images):
        images = [images]
    if not isinstance(images, list) or not all(_is_image(image) for image in images):
        return None, f"field '{columns.images}': expected a list of image paths or images"
    if not 1 <= len(images) <= max_images:
        return None, f"field '{columns.images}': has {len(images)} images, TIPPo takes 1 to {max_images}"
    checked = []
    for image in images:
        try:
            checked.append(_checked_image(image, image_root))
        except ValueError as error:
            return None, f"field '{columns.images}': {error}"
    reference = row.get(columns.reference, "")
    if reference is None and not require_reference:
        reference = ""
    if not isinstance(reference, str):
        return None, f"field '{columns.reference}': expected a string, got {type(reference).__name__}"
    if require_reference and not reference.strip():
        return None, f"field '{columns.reference}': is empty"
    references = row.get("references") or ([reference] if reference else [])
    if not isinstance(references, list) or not all(isinstance(text, str) for text in references):
        return None, "field 'references': expected a list of strings"
    used = {columns.title, columns.images, columns.reference, "references", "id"}
    clean = {"id": str(row.get("id", "") or ""), "title": title, "images": checked, "reference": reference}
    clean["references"] = references
    clean.update({name: value for name, value in row.items() if name not in used and name not in FEATURES})
    for field_name, column in (("title", columns.title), ("reference", columns.reference)):
        if column != field_name and column in row:  # under the dataset's own name too: a TRL reward reads that
            clean[column] = clean[field_name]
    return clean, None


def load_artmuse(
    path: str | Path,
    image_root: str | Path | None = None,
    max_images: int = 5,
    allow_empty_title: bool = False,
    require_reference: bool = True,
    on_error: str = "raise",
) -> Dataset:
    """Load ArtMuse-style JSONL: one `{"title", "images": [paths], "reference"}` object per line.

    Args:
        path: the `.jsonl` file.
        image_root: folder that relative image paths start from (default: the file's folder).
        max_images: N_max; rows with more images are bad rows.
        allow_empty_title: accept rows whose title is empty (captioning data).
        require_reference: a missing or empty reference is a bad row (set False for inference inputs).
        on_error: `"raise"` (stop at the first bad row) or `"skip"` (drop bad rows, warn with counts).
    """
    _check_on_error(on_error)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file '{path}' does not exist")
    image_root = Path(image_root) if image_root is not None else path.parent
    rows, problems = [], Counter()
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is a bad row, named, not a crash of the whole file
        for line_number, raw in enumerate(f, start=1):
            if line_number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as Windows editors write
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                clean, problem = (
                    None,
                    f"row: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})",
                )
            else:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    clean, problem = None, f"row: not valid JSON ({error.msg}, column {error.colno})"
                else:
                    clean, problem = validate_row(row, image_root, max_images, allow_empty_title, require_reference)
            _keep_or_count(
                rows, problems, clean, problem, f"{path.stem}-{line_number}", f"{path}, line {line_number}", on_error
            )
    return _finish(rows, problems, str(path), on_error)


DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def open_dataset(name: str, config: str | None = None) -> DatasetDict:
    """The splits of a dataset as `datasets` names them: a folder written by `save_to_disk` (`load_from_disk`), a data
    file (`.json`, `.jsonl`, `.parquet`, `.csv`, `.arrow`: one `train` split), or anything `load_dataset(name, config)`
    reads (a hub id; a folder of data files; an `imagefolder` with `metadata.jsonl`)."""
    path = Path(name)
    try:
        if path.is_dir() and any(
            (path / marker).is_file() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")
        ):
            loaded = load_from_disk(str(path))
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        if path.is_file():
            builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataValidationError(
                    f"dataset '{name}': cannot read a '{path.suffix}' file; use one of {', '.join(DATA_FILE_BUILDERS)} or a folder"
                )
            return load_dataset(builder, data_files=str(path))
        return load_dataset(name, config)
    except DataValidationError:
        raise
    except Exception as error:  # offline, unknown id, unreadable files: say what was asked for
        raise DataValidationError(f"dataset '{name}' cannot be loaded: {type(error).__name__}: {error}") from error


def _undecoded(dataset: Dataset, column: str) -> Dataset:
    """`dataset` whose image column (an `Image` or a list of them) holds `{bytes, path}` dicts: validation decodes each
    image once, cheaply, rather than `datasets` decoding them in full."""
    feature = dataset.features[column]
    if isinstance(feature, Image):
        return dataset.cast_column(column, Image(decode=False))
    if isinstance(feature, List) and isinstance(feature.feature, Image):
        return dataset.cast_column(column, List(Image(decode=False)))
    return dataset


def load_hf_dataset(
    name: str,
    split: str = "train",
    config: str | None = None,
    columns: ColumnNames = ColumnNames(),
    image_root: str | Path | None = None,
    max_images: int = 5,
    allow_empty_title: bool = False,
    require_reference: bool = True,
    on_error: str = "raise",
) -> Dataset:
    """Load a Hugging Face dataset as a TIPPo dataset, validated as `load_artmuse` validates JSONL rows.

    Args:
        name: a hub id, a `save_to_disk` folder, a data file or a folder `datasets.load_dataset` reads
            (see `open_dataset`).
        split: the split to load (`--dataset_train_split` / `--dataset_test_split`).
        config: the dataset's configuration (`--dataset_config`).
        columns: the source's column for each TIPPo field: the title (a string; may be absent with
            `allow_empty_title`), the images (an `Image`, a list of `Image`s, a path or a list of paths) and the
            reference text (may be absent unless `require_reference`). Every other column is kept.
        image_root: folder relative image paths start from (default: `name` when it is a folder, else the current
            directory).
        max_images, allow_empty_title, require_reference, on_error: as for `load_artmuse`.

    Raises:
        DataValidationError: the dataset cannot be loaded, has no such split or column (the message lists those it
            has), or a row is bad (the message names the split, row and column).
    """
    _check_on_error(on_error)
    splits = open_dataset(name, config)
    if split not in splits:
        raise DataValidationError(f"dataset '{name}' has no split '{split}'; its splits: {', '.join(splits)}")
    dataset = splits[split]
    source = f"dataset '{name}', split '{split}'"
    found = ", ".join(dataset.column_names)
    needed = [("images", columns.images, "--images_column")]
    if not allow_empty_title:
        needed.append(("title", columns.title, "--title_column"))
    if require_reference:
        needed.append(("reference", columns.reference, "--reference_column"))
    for field_name, column, option in needed:
        if column not in dataset.column_names:
            raise DataValidationError(
                f"{source}: no column '{column}' for the {field_name} ({option}); its columns: {found}"
            )
    for field_name, column in (("title", columns.title), ("images", columns.images), ("reference", columns.reference)):
        if column != field_name and field_name in dataset.column_names:
            raise DataValidationError(
                f"{source}: the {field_name} is read from column '{column}', but there is also a column '{field_name}', "
                "which would be lost; rename or remove one of them"
            )
    mapped = {columns.title, columns.images, columns.reference}
    folder = Path(name) if Path(name).is_dir() else Path.cwd()
    image_root = Path(image_root) if image_root is not None else folder
    dataset = _undecoded(dataset, columns.images)
    extra_features = {
        column: feature
        for column, feature in dataset.features.items()
        if column not in mapped and column not in FEATURES
    }
    for field_name, column in (("title", columns.title), ("reference", columns.reference)):
        if (
            column != field_name and column in dataset.column_names
        ):  # kept under its own name as well (reward plug-ins)
            extra_features[column] = Value("string")
    rows, problems = [], Counter()
    for index, row in enumerate(dataset):
        clean, problem = validate_row(row, image_root, max_images, allow_empty_title, require_reference, columns)
        _keep_or_count(rows, problems, clean, problem, f"{split}-{index}", f"{source}, row {index}", on_error)
    return _finish(rows, problems, source, on_error, Features(extra_features))


def load_coco_captions(
    annotations: str | Path,
    image_dir: str | Path,
    one_row_per: str = "caption",
    on_error: str = "raise",
) -> Dataset:
    """Load COCO captions (COCO, COCO-CN, any language): a COCO captions JSON (`{"images": [{"id", "file_name"}],
    "annotations": [{"image_id", "caption"}]}`) and its image folder. Titles are empty.

    Args:
        one_row_per: `"caption"` (training: one row per caption) or `"image"` (evaluation: one row per
            image, its first caption as `reference` and all of them in `references`).
    """
    _check_on_error(on_error)
    if one_row_per not in ("caption", "image"):
        raise ValueError(f"one_row_per must be 'caption' or 'image', got {one_row_per!r}")
    annotations, image_dir = Path(annotations), Path(image_dir)
    if not annotations.is_file():
        raise FileNotFoundError(f"annotation file '{annotations}' does not exist")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder '{image_dir}' does not exist")
    try:
        coco = json.loads(annotations.read_text(encoding="utf-8-sig"))
        files = {image["id"]: image["file_name"] for image in coco["images"]}
        captions: dict[Any, list[str]] = {}
        for index, annotation in enumerate(coco["annotations"]):
            caption = annotation.get("caption")
            if annotation.get("image_id") not in files:
                raise DataValidationError(
                    f"{annotations}: annotations[{index}] refers to image_id {annotation.get('image_id')!r}, "
                    "which is not in 'images'"
                )
            if not isinstance(caption, str) or not caption.strip():
                raise DataValidationError(
                    f"{annotations}: annotations[{index}] field 'caption' is empty or not a string"
                )
            captions.setdefault(annotation["image_id"], []).append(caption)
    except UnicodeDecodeError as error:
        raise DataValidationError(f"{annotations}: not UTF-8 text (byte offset {error.start})") from error
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataValidationError(f"{annotations}: not a COCO captions file ({error!r})") from error
    rows, problems = [], Counter()
    for image_id, texts in captions.items():
        try:
            open_image(image_dir / files[image_id], max_pixels=CHECK_PIXELS)
        except ValueError as error:
            if on_error == "raise":
                raise DataValidationError(f"{annotations}: image_id {image_id}: field 'file_name': {error}") from error
            problems["field 'file_name'"] += 1
            continue
        path = str(image_dir / files[image_id])
        targets = texts if one_row_per == "caption" else texts[:1]
        for number, text in enumerate(targets):
            rows.append(
                {"id": f"{image_id}-{number}", "title": "", "images": [path], "reference": text, "references": texts}
            )
    return _finish(rows, problems, str(annotations), on_error)


# Options a project format needs to read a split: {(dataset, split): options}.
REQUIRED_OPTIONS = {
    ("artmuse", "train"): ("train_file",),
    ("coco", "train"): ("coco_train_annotations", "coco_image_dir"),
    ("cococn", "train"): ("coco_train_annotations", "coco_image_dir"),
}


def check_dataset_columns(dataset: Dataset, what: str, require_reference: bool = True) -> None:
    """At a trainer's door: `dataset` has the columns TIPPo reads (`images`, `title` and, to train on targets,
    `reference`), else a `DataValidationError` naming the missing one and listing those it has."""
    needed = ["images", "title"] + (["reference"] if require_reference else [])
    for column in needed:
        if column not in dataset.column_names:
            raise DataValidationError(
                f"{what} has no column '{column}'; its columns: {', '.join(dataset.column_names)}. Rename yours "
                f"(dataset.rename_column('text', '{column}')) or load it with tippo_rl.data.load_hf_dataset(..., "
                f"columns=ColumnNames({column}='text')) (--{column}_column text in the recipes)"
            )


def load_datasets(
    args: TIPPoScriptArguments,
    max_images: int = 5,
    require_reference: bool = True,
    splits: tuple[str, ...] = ("train", "eval"),
) -> tuple[Dataset | None, Dataset | None]:
    """(train, eval) datasets as the script arguments describe them; a split not in `splits` is not read (None).
    `require_reference=False` (PPO with rewards that need no target) accepts training rows without a reference;
    evaluation rows always need one. The evaluation split is None where the data has none."""
    for split in splits:
        for option in REQUIRED_OPTIONS.get((args.dataset, split), ()):
            if getattr(args, option) is None:
                what = "to train on" if split == "train" else "to evaluate on"
                raise DataValidationError(f"--dataset {args.dataset}: set --{option}, the {split} data {what}")
    train = evaluation = None
    if args.dataset == "hf":
        columns = ColumnNames(title=args.title_column, images=args.images_column, reference=args.reference_column)
        options = dict(
            config=args.dataset_config,
            columns=columns,
            image_root=args.image_root,
            max_images=max_images,
            allow_empty_title=args.allow_empty_title,
            on_error=args.on_bad_rows,
        )
        if "train" in splits:
            train = load_hf_dataset(
                args.dataset_name, args.dataset_train_split, require_reference=require_reference, **options
            )
        if "eval" in splits:
            try:
                evaluation = load_hf_dataset(args.dataset_name, args.dataset_test_split, **options)
            except DataValidationError as error:
                if "has no split" not in str(error):
                    raise
                logger.info("%s: no evaluation split", error)
    elif args.dataset == "demo":
        # One process per machine writes the files (each machine may have its own disk), the others then reuse them.
        with PartialState().local_main_process_first():
            folder = make_demo_dataset(
                args.demo_dir,
                num_train=args.demo_num_train,
                num_test=args.demo_num_test,
                lang=args.demo_lang,
                max_images=max_images,
                annotator_confusion=args.demo_annotator_confusion,
            )
        train = load_artmuse(folder / "train.jsonl") if "train" in splits else None
        evaluation = load_artmuse(folder / "test.jsonl") if "eval" in splits else None
    elif args.dataset == "artmuse":
        options = dict(allow_empty_title=args.allow_empty_title, on_error=args.on_bad_rows)
        if "train" in splits:
            train = load_artmuse(
                args.train_file, args.image_root, max_images, require_reference=require_reference, **options
            )
        if "eval" in splits and args.eval_file:
            evaluation = load_artmuse(args.eval_file, args.image_root, max_images, **options)
    else:  # coco, cococn: each annotations file with its own image folder
        if "train" in splits:
            train = load_coco_captions(args.coco_train_annotations, args.coco_image_dir, "caption", args.on_bad_rows)
        if "eval" in splits and args.coco_eval_annotations:
            image_dir = args.coco_eval_image_dir or args.coco_image_dir
            if image_dir is None:
                raise DataValidationError(
                    "--coco_eval_annotations: set --coco_eval_image_dir, the evaluation images' folder"
                )
            evaluation = load_coco_captions(args.coco_eval_annotations, image_dir, "image", args.on_bad_rows)
    if evaluation is not None and args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation
