"""Checkpoints and saved models that are either complete or visibly not there.

- Every save is written into a staging folder whose name starts with `_incomplete-` (never matched by the Trainer's
  `checkpoint-N` pattern, and skipped by its Hub uploads) and published when complete: a checkpoint by one rename,
  a final save by moving its files into `output_dir` with the weights last, so a folder that has weights also has
  everything saved with them.
- `resolve_checkpoint` turns `--resume_from_checkpoint` (a folder, `last` or `true`) into a folder, and
  `check_checkpoint` reads every file of it once, so a damaged file is named before training starts instead of
  failing deep inside the Trainer.
- A save that runs out of disk space (`reporting_disk_full`) removes its staging folder and raises `DiskFullError`,
  one line naming the path and the space it needs, instead of torch's `inline_container.cc` traceback.
- `redacted` strips secrets (`hub_token`, any `*_token` field) from the training arguments the Trainer pickles into
  `training_args.bin`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_utils import get_last_checkpoint

from .errors import CheckpointError, DiskFullError


STAGING_PREFIX = "_incomplete-"
TRAINER_STATE_NAME = "trainer_state.json"
PPO_STATE_NAME = "ppo_state.json"  # the PPO iteration and its statistics, beside the Trainer's state
# A folder holding one of these is taken for a model (by `from_pretrained`, or the Trainer's resume): written last.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "value_head.safetensors",
)
LAST_ALIASES = ("last", "latest", "true")
NO_ALIASES = ("", "false", "no", "none")


# torch's archive writer reports a full disk as "unexpected pos 704 vs 598" or "file write failed", without errno: a
# write that failed with less than this left on its disk is taken for a full disk.
NEARLY_FULL_BYTES = 1 << 20


def disk_is_full(error: BaseException, path: str | os.PathLike) -> bool:
    """Whether `error`, raised while writing under `path`, means that its disk (or quota) is full."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):  # safetensors' Rust I/O error
            return True
        seen = seen.__cause__ or seen.__context__
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def folder_size(folder: str | os.PathLike) -> int:
    """Bytes held by the files under `folder`."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


SAVE_ADVICE = (
    "the saves before it are intact: free some space, or set --output_dir to a disk with room (--save_total_limit "
    "keeps fewer checkpoints)"
)


@contextlib.contextmanager
def reporting_disk_full(
    path: str | os.PathLike,
    staging: str | os.PathLike | None = None,
    needed: int | None = None,
    advice: str = SAVE_ADVICE,
):
    """Around a save to `path`: when the disk fills up, remove `staging` (the half-written save; what was published
    before stays as it was) and raise `DiskFullError` naming `path`, the space the save needs (`needed` bytes, when
    known), what is free there, and `advice`."""
    try:
        yield
    except Exception as error:
        if isinstance(error, DiskFullError) or not disk_is_full(error, staging or path):
            raise
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        existing = Path(path)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        needs = f"it needs about {megabytes(needed)}, " if needed else ""
        raise DiskFullError(
            f"no space left on device writing '{path}' ({needs}{megabytes(free)} free there); {advice}"
        ) from error


def staging_folder(final: str | os.PathLike) -> Path:
    """Where a save that will become `final` is written first: `<parent>/_incomplete-<name>`."""
    final = Path(final)
    return final.parent / f"{STAGING_PREFIX}{final.name}"


def publish_folder(staging: Path, final: Path) -> None:
    """Rename a completely written `staging` folder to `final` (one atomic rename; an older `final` is replaced)."""
    if final.exists():
        retired = final.parent / f"{STAGING_PREFIX}replaced-{final.name}"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)


def publish_files(staging: Path, output_dir: Path) -> None:
    """Move everything in a completely written `staging` folder into `output_dir`, weights last.

    The previous weights go first, so at every moment `output_dir` either holds no weights or the new weights with
    everything saved with them (processor, config, adapter). The checkpoints keep the run's state meanwhile."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in WEIGHT_NAMES:
        (output_dir / name).unlink(missing_ok=True)
    entries = sorted(staging.iterdir(), key=lambda path: (path.name in WEIGHT_NAMES, path.name == "model.safetensors"))
    for entry in entries:
        target = output_dir / entry.name
        if entry.is_dir() and target.exists():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def resolve_checkpoint(value, output_dir: str | os.PathLike) -> str | None:
    """`--resume_from_checkpoint` → a checkpoint folder, or None (start afresh).

    `last`, `latest` or `true` (or `True`) pick the newest complete `checkpoint-N` in `output_dir`."""
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in LAST_ALIASES):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise CheckpointError(
                f"--resume_from_checkpoint {value}: '{output_dir}' holds no complete checkpoint-N folder to resume from; "
                "run without --resume_from_checkpoint to start afresh"
            )
        return last
    if isinstance(value, str) and value.strip().lower() in NO_ALIASES:
        return None
    path = Path(value)
    if path.name.startswith(STAGING_PREFIX):
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: this folder is a save that never finished; pass 'last' or an earlier "
            "checkpoint-N"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: no such checkpoint folder; pass a checkpoint-N folder, or 'last' for the "
            "newest one in --output_dir"
        )
    return str(path)


def check_checkpoint(folder: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """Read every file of a checkpoint once: JSON parses, safetensors headers cover their files, torch `.pt`/`.pth`
    archives pass their CRC check. Returns the parsed `trainer_state.json`.

    Raises:
        CheckpointError: a file is missing (`trainer_state.json`, weights, `required`) or damaged; the message names it.
    """
    folder = Path(folder)
    advice = "resume from an earlier checkpoint-N (or 'last' after deleting this one)"
    for name in (TRAINER_STATE_NAME, *required):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint '{folder}' is incomplete: it holds no {name}; {advice}")
    if not any((folder / name).is_file() for name in WEIGHT_NAMES) and not any(folder.glob("global_step*")):
        raise CheckpointError(f"checkpoint '{folder}' holds no model weights (model.safetensors); {advice}")
    state = None
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                parsed = json.loads(path.read_text(encoding="utf-8"))
                if path.name == TRAINER_STATE_NAME:
                    state = parsed
                    int(parsed["global_step"])
            elif path.suffix == ".safetensors":
                with safe_open(path, framework="pt") as weights:
                    for key in weights.keys():
                        weights.get_slice(key)
            elif path.suffix in (".pt", ".pth", ".bin") and path.name != "training_args.bin":
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"entry {bad} fails its CRC check")
        except Exception as error:  # each library raises its own types for a damaged file
            reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint '{folder}': file {path.relative_to(folder)} is damaged ({reason}); {advice}"
            ) from error
    return state


def read_ppo_state(checkpoint: str | os.PathLike) -> dict:
    """The parsed `ppo_state.json` of a PPO checkpoint (at least `step` and `iteration`).

    Raises:
        CheckpointError: the file is missing (not a PPO checkpoint) or damaged; the message names it.
    """
    path = os.path.join(checkpoint, PPO_STATE_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"'{checkpoint}' holds no {PPO_STATE_NAME}, so the PPO iteration and its statistics cannot be restored: "
            "it is not a PPO checkpoint (an SFT output is a model: pass it as --model_name_or_path), or its save was "
            "interrupted by a version that did not save atomically; resume from an earlier checkpoint"
        )
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        int(state["step"]), int(state["iteration"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"'{checkpoint}': file {PPO_STATE_NAME} is damaged ({type(error).__name__}: {error}); resume from an earlier checkpoint"
        ) from error
    return state


def check_model_source(source: str, option: str = "--model") -> None:
    """Raise `ValueError` naming `option` unless `source` is a folder holding a saved model or has the form of a Hub id
    (`name` or `namespace/name`), which is left to the Hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{option} '{source}': this folder holds no saved model (no config.json)")
        return
    if path.exists():
        raise CheckpointError(f"{option} '{source}' is a file; pass the folder the model was saved to")
    if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1 or not str(source).strip():
        raise CheckpointError(f"{option} '{source}': no such folder")


def redacted(args):
    """A shallow copy of a (Training)Arguments dataclass with every secret field (`token`, `*_token`) set to None."""
    args = copy.copy(args)
    for field in dataclasses.fields(args):
        if (field.name == "token" or field.name.endswith("_token")) and getattr(args, field.name, None) is not None:
            object.__setattr__(args, field.name, None)
    return args
