"""The recipes' command line, as TRL's `trl/scripts/utils.py` has it: `TIPPoScriptArguments` (which data a recipe
trains and evaluates on) and `TIPPoParser`, TRL's parser whose mistakes end a run with one line naming the file, line
or option."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from trl import TrlParser

from .errors import INPUT_ERRORS
from .language import LANGUAGES, detect_language
from .launcher import stop_with_launcher
from .options import option


logger = logging.getLogger(__name__)

# hf: a Hugging Face dataset (--dataset_name); coco: a COCO captions JSON and its image folder, in any language (cococn,
# the paper's COCO-CN, is the same format and loader).
DATASET_KINDS = ("demo", "artmuse", "coco", "cococn", "hf")
LANGS = ("auto", "en", "zh")  # --lang
# Options of which a run takes one: given one on the command line, the YAML's other one gives way.
EXCLUSIVE_OPTIONS = (("total_iterations", "max_steps"), ("generation_batch_size", "steps_per_generation"))
# {alias: canonical option}: given to a recipe that has the canonical option but not the alias, the alias sets it.
# `max_eval_samples` (rows of the eval split a run keeps) is canonical; `eval_max_samples` is the training configs' own
# option (rows decoded at each evaluation during training), so in sft/ppo/polishppo both exist and mean different things,
# and in evaluate/ablate, which only have the first, `eval_max_samples` means it.
OPTION_ALIASES = {"eval_max_samples": "max_eval_samples"}


class TIPPoParser(TrlParser):
    """TRL's parser whose mistakes in the config or on the command line end the run with one line naming the file,
    line or option (argparse's `error:` and exit status 2), never a traceback."""

    def parse_args_and_config(self, args=None, **kwargs):
        stop_with_launcher()  # a recipe's worker never outlives its `accelerate launch`
        args = list(args) if args is not None else sys.argv[1:]
        if "--config" in args and args.index("--config") + 1 < len(args):
            check_yaml_config(args[args.index("--config") + 1], self.error)
        args = [self._canonical(arg) if arg.startswith("--") else arg for arg in args]
        self._command_line_options = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
        try:
            parsed = super().parse_args_and_config(args=args, **kwargs)
        except ValueError as error:  # a dataclass's __post_init__ refusing a value: its message names the option
            self.error(self.unknown_options_explained(str(error)))
        set_cpu_threads(parsed)
        quiet_deepspeed_on_a_cpu_machine()
        return parsed

    def unknown_options_explained(self, message: str) -> str:
        """HfArgumentParser's and TrlParser's "arguments not used" / "Unknown arguments from config file" messages, as
        one line per run: each unknown option with the known ones it is closest to, or, for a TRL GRPO option that has no
        counterpart here, that it is TRL's."""
        match = re.search(r"(not used by the HfArgumentParser|Unknown arguments from config file): (\[.*?\])", message)
        if not match:
            return message
        where = "in the config file" if match.group(1).startswith("Unknown") else "on the command line"
        unknown = [item for item in ast.literal_eval(match.group(2)) if str(item).startswith("--")]
        known = [flag[2:] for flag in self._option_string_actions if flag.startswith("--") and "-" not in flag[2:]]
        explained = []
        for argument in unknown:
            name = argument[2:].split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
            if close:
                explained.append(f"--{name} (did you mean {' or '.join(f'--{c}' for c in close)}?)")
            elif name in trl_grpo_option_names():
                explained.append(f"--{name} (TRL GRPOConfig's; it has no counterpart here)")
            else:
                explained.append(f"--{name}")
        plural = "s" if len(explained) > 1 else ""
        return f"unknown option{plural} {where}: {', '.join(explained)} (--help lists every option)"

    def error(self, message: str):
        """argparse's error, in one line: the message, not the usage of every option first (~180 lines)."""
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _canonical(self, argument: str) -> str:
        """`--alias[=value]` as the canonical option it stands for in this recipe (see `OPTION_ALIASES`), with a note."""
        name, equals, value = argument[2:].partition("=")
        canonical = self._aliased(name)
        return f"--{canonical}{equals}{value}" if canonical != name else argument

    def _aliased(self, name: str) -> str:
        canonical = OPTION_ALIASES.get(name)
        if canonical is None or f"--{name}" in self._option_string_actions:
            return name
        if f"--{canonical}" not in self._option_string_actions:
            return name
        logger.warning("%s: %s is read as %s, this recipe's name for it", self.prog, name, canonical)
        return canonical

    def set_defaults_with_config(self, **config):
        config = {self._aliased(name): value for name, value in config.items()}
        # Of two exclusive options (the run's length: total_iterations or max_steps), the one on the command line wins
        # over the other one in the YAML, as any command-line value wins over the YAML's.
        given = getattr(self, "_command_line_options", set())
        for first, second in EXCLUSIVE_OPTIONS:
            for on_command_line, in_yaml in ((first, second), (second, first)):
                if on_command_line in given and in_yaml in config and in_yaml not in given:
                    logger.info(
                        "--%s on the command line replaces the config's %s: %s",
                        on_command_line,
                        in_yaml,
                        config[in_yaml],
                    )
                    del config[in_yaml]
        return super().set_defaults_with_config(**config)

    @contextlib.contextmanager
    def reporting_input_errors(self):
        """Around a recipe's `main`: a bad input file, row or checkpoint, or a full disk, ends the run with its one-line
        message."""
        try:
            yield
        except INPUT_ERRORS as error:
            self.exit(2, f"{self.prog}: error: {error}\n")


@functools.cache
def trl_grpo_option_names() -> frozenset[str]:
    """The options of TRL's `GRPOConfig` (to say which unknown option is TRL's)."""
    from trl import GRPOConfig

    return frozenset(field.name for field in dataclasses.fields(GRPOConfig))


def set_cpu_threads(parsed) -> None:
    """`--cpu_threads` (TIPPoScriptArguments) as torch's thread count, when the run is on a CPU (no GPU, or `use_cpu`)."""
    script_args = next((arguments for arguments in parsed if hasattr(arguments, "cpu_threads")), None)
    on_cpu = not torch.cuda.is_available() or any(getattr(arguments, "use_cpu", False) for arguments in parsed)
    if script_args is not None and script_args.cpu_threads > 0 and on_cpu:
        torch.set_num_threads(script_args.cpu_threads)


def quiet_deepspeed_on_a_cpu_machine() -> None:
    """On a machine without an accelerator, tell DeepSpeed (imported by accelerate when installed) that it runs on the
    CPU, which it finds out anyway, so that it does not log "[WARNING] Setting accelerator to CPU. If you have GPU or other
    accelerator, we were unable to detect it." among the run's first lines. A DS_ACCELERATOR the user set is kept."""
    if not torch.accelerator.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def check_yaml_config(path: str, error) -> None:
    """Call `error(message)` unless `path` is a readable YAML mapping; the message names the line and column."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except (FileNotFoundError, IsADirectoryError):
        error(f"--config '{path}': no such file")
    except UnicodeDecodeError as problem:
        error(f"--config '{path}': not UTF-8 text (byte offset {problem.start})")
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        error(f"--config '{path}': not valid YAML: {where}{getattr(problem, 'problem', None) or problem}")
    else:
        if not isinstance(config, dict):
            error(f"--config '{path}': expected a YAML mapping of option: value, got {type(config).__name__}")


@dataclass
class TIPPoScriptArguments:
    """Which data a recipe trains and evaluates on: `--dataset_name` (any Hugging Face dataset, as in TRL's
    `ScriptArguments`), or one of the project's formats (`--dataset demo|artmuse|coco`)."""

    dataset_name: str | None = option(
        None,
        "A Hugging Face dataset: a hub id, a save_to_disk folder, a .json/.jsonl/.parquet/.csv file or a folder load_dataset reads (e.g. an imagefolder with metadata.jsonl). Takes the place of --dataset.",
    )
    dataset_config: str | None = option(None, "--dataset_name: its configuration (load_dataset's `name`).")
    dataset_train_split: str = option("train", "--dataset_name: the split to train on.")
    dataset_test_split: str = option(
        "test", "--dataset_name: the split to evaluate on (none if the dataset lacks it)."
    )
    title_column: str = option("title", "--dataset_name: the column holding the title (a string).")
    images_column: str = option(
        "images",
        "--dataset_name: the column holding the images (an Image, a list of Images, a path or a list of paths; `image` in an imagefolder).",
    )
    reference_column: str = option("reference", "--dataset_name: the column holding the target text.")
    dataset: str = option(
        "demo",
        "`demo` (the embedded default, generated on the fly), `artmuse` (JSONL) or `coco` (a COCO captions JSON and its image folder; `cococn` is the same); ignored with --dataset_name.",
    )
    train_file: str | None = option(
        None, "artmuse: training JSONL ({title, images, reference} rows; other fields reach reward plug-ins)."
    )
    eval_file: str | None = option(None, "artmuse: evaluation JSONL.")
    image_root: str | None = option(
        None,
        "artmuse, --dataset_name: folder relative image paths start from (default: the JSONL's or the dataset's folder).",
    )
    coco_train_annotations: str | None = option(
        None, "coco: the training captions JSON (COCO's captions_train2017.json)."
    )
    coco_eval_annotations: str | None = option(
        None, "coco: the evaluation captions JSON (COCO's captions_val2017.json)."
    )
    coco_image_dir: str | None = option(None, "coco: the training images' folder (COCO's train2017/).")
    coco_eval_image_dir: str | None = option(
        None, "coco: the evaluation images' folder (COCO's val2017/); default: --coco_image_dir."
    )
    lang: str = option(
        "auto",
        "The data's language, `en` or `zh`: it picks the metrics' word segmentation, the semantic reward's embedder and the tiny preset's φ. `auto`: read from the training texts (the demo: --demo_lang); a given value that the texts contradict is warned about.",
    )
    demo_dir: str = option("outputs/demo_data", "demo: where the generated dataset is written.")
    demo_lang: str = option("en", "demo: `en` or `zh` texts.")
    demo_num_train: int = option(400, "demo: training samples.")
    demo_num_test: int = option(300, "demo: held-out samples.")
    demo_annotator_confusion: float = option(
        0.6,
        "demo: the chance that a training reference calls a purple object blue, as annotators who confuse the two colours would (the held-out references are always right). Above 0.5, SFT learns to say blue; the demo's PolishPPO learns better from its scene verifier (`tippo_rl.demo.scene_verifier`), which reads the images. 0: every reference right.",
    )
    on_bad_rows: str = option("raise", "`raise` at the first bad row, or `skip` bad rows with a counted warning.")
    allow_empty_title: bool = option(
        False, "artmuse, --dataset_name: accept rows with an empty title, or no title column (captioning data)."
    )
    max_eval_samples: int | None = option(
        None,
        "Keep the first this many rows of the eval split (None: all): what recipes/evaluate.py scores and what evaluation during training reads. Where a recipe has no eval_max_samples (evaluate, ablate), --eval_max_samples is read as this. Training decodes at most eval_max_samples of these rows at each evaluation.",
    )
    cpu_threads: int = option(
        1,
        "torch threads per process when running on a CPU (0: torch's default, one per core). One: a tiny model gains nothing from a second thread (demo SFT 1.1× slower with two on an idle 2-core machine) and loses up to 25× when other jobs share the cores.",
    )

    def data_language(self, texts) -> str:
        """The data's language: the demo's `demo_lang`; else `--lang`, or, with `auto`, what `texts` (the training
        references) read as. A `--lang` that the texts contradict is used, with a one-line warning."""
        if self.dataset == "demo":
            return self.demo_lang
        detected = detect_language(texts)
        if self.lang == "auto":
            logger.info("the data's language, read from its texts: %s (--lang to set it)", detected)
            return detected
        if self.lang != detected:
            logger.warning("--lang %s, but the training texts read as %s; using %s", self.lang, detected, self.lang)
        return self.lang

    @property
    def dataset_id(self) -> str:
        """What the data is called on the hub and in model cards: `--dataset_name`, else the project format's name."""
        return self.dataset_name or self.dataset

    def __post_init__(self):
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be ≥ 0 (0: torch's default), got {self.cpu_threads}")
        if self.dataset_name is not None:
            self.dataset = "hf"  # the YAML's `dataset: demo` gives way to a --dataset_name on the command line
        elif self.dataset == "hf":
            raise ValueError("--dataset hf reads a Hugging Face dataset: set --dataset_name")
        if self.dataset not in DATASET_KINDS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASET_KINDS)}; got {self.dataset!r}")
        if self.on_bad_rows not in ("raise", "skip"):
            raise ValueError(f"--on_bad_rows must be 'raise' or 'skip'; got {self.on_bad_rows!r}")
        if self.demo_lang not in LANGUAGES:
            raise ValueError(f"--demo_lang must be 'en' or 'zh'; got {self.demo_lang!r}")
        if not 0.0 <= self.demo_annotator_confusion <= 1.0:
            raise ValueError(
                f"--demo_annotator_confusion is a probability in [0, 1]; got {self.demo_annotator_confusion}"
            )
        if self.lang not in LANGS:
            raise ValueError(f"--lang must be one of {', '.join(LANGS)}; got {self.lang!r}")
        if self.dataset == "hf":
            return  # load_datasets checks the dataset itself (splits, columns, rows)
        for name in (
            "train_file",
            "eval_file",
            "coco_train_annotations",
            "coco_eval_annotations",
            "coco_image_dir",
            "coco_eval_image_dir",
            "image_root",
        ):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ValueError(f"--{name} {value!r} does not exist")
