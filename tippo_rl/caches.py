"""The caches tippo_rl writes, under `cache_root()` (`$TIPPO_RL_CACHE`, default `~/.cache/tippo_rl`): the tiny preset's
pretrained φ (`tiny_encoders/`), distilled static sentence embedders (`static_embedders/`) and frozen features
(`features/`); and the demo dataset, generated once into its folder (`--demo_dir`).

Every entry is built once under a file lock (the processes of a distributed run build it once), recorded with a
manifest of its files' sizes and SHA-256, and published whole: a folder is written as `<name>.partial` and renamed. Every
read checks the manifest first; an entry that fails it (a truncated or corrupted file, a file gone) is named in one
warning, removed and built again, so a damaged cache costs a rebuild, never a wrong result or a traceback. An entry
written before manifests existed is loaded once (the cache's own check) and given its manifest when it loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .checkpoints import reporting_disk_full


logger = logging.getLogger(__name__)

MANIFEST_NAME = "tippo_rl_manifest.json"  # inside a folder entry; a file entry's is `<file>.manifest.json` beside it
FULL_DISK_ADVICE = "free some space, or set TIPPO_RL_CACHE (or --feature_cache_dir) to a disk with room"


def cache_root() -> Path:
    """`$TIPPO_RL_CACHE` or `~/.cache/tippo_rl`."""
    return Path(os.environ.get("TIPPO_RL_CACHE") or Path.home() / ".cache" / "tippo_rl")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(entry: Path) -> dict[str, Path]:
    if entry.is_dir():
        return {
            path.relative_to(entry).as_posix(): path
            for path in sorted(entry.rglob("*"))
            if path.is_file() and path.name != MANIFEST_NAME
        }
    return {entry.name: entry}


def record_manifest(entry: Path, manifest: Path) -> None:
    """Write `manifest`: each file of `entry` (a folder, or one file) with its size and SHA-256 (atomically)."""
    files = {name: {"size": path.stat().st_size, "sha256": _sha256(path)} for name, path in _files(entry).items()}
    partial = manifest.with_name(manifest.name + ".partial")
    partial.write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
    os.replace(partial, manifest)


def damage(entry: Path, manifest: Path, check: Callable[[Path], object]) -> str | None:
    """What is wrong with a cache entry, or None when it is whole. With a manifest: every file it lists is there with
    its size and SHA-256. Without one (an entry written before manifests): `check(entry)` loads it, and the entry is
    given its manifest when that succeeds."""
    if not manifest.is_file():
        try:
            check(entry)
        except Exception as error:  # each library raises its own types for a damaged file
            return f"it does not load: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        with contextlib.suppress(OSError):  # a read-only or full cache: checked again next time
            record_manifest(entry, manifest)
        return None
    try:
        expected = json.loads(manifest.read_text())["files"]
        expected = {name: (int(record["size"]), str(record["sha256"])) for name, record in expected.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"its manifest {manifest.name} is unreadable ({type(error).__name__})"
    files = _files(entry)
    for name, (size, sha256) in expected.items():
        if name not in files:
            return f"{name} is missing"
        actual = files[name].stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, {size} were written (truncated?)"
        if _sha256(files[name]) != sha256:
            return f"{name} is corrupted (its SHA-256 differs from the one recorded when it was written)"
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def whole(entry: Path, manifest: Path, check: Callable[[Path], object]) -> bool:
    """Whether an existing entry is whole (`damage`); a damaged one is warned about in one line, to be built again."""
    problem = damage(entry, manifest, check)
    if problem is not None:
        logger.warning("cache '%s' is damaged (%s): building it again", entry, problem)
    return problem is None


def _usable(entry: Path, manifest: Path, check: Callable[[Path], object]) -> bool:
    """Whether an existing entry is whole; a damaged one is removed."""
    if whole(entry, manifest, check):
        return True
    _remove(entry)
    manifest.unlink(missing_ok=True)
    return False


def cached_folder(target: Path, build: Callable[[Path], object], check: Callable[[Path], object]) -> Path:
    """The cache folder `target`, built by `build(folder)` (which writes the entry into the empty `folder`) when it is
    absent or damaged. `check(folder)` loads an entry written before manifests (it raises when that fails)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists() and _usable(target, target / MANIFEST_NAME, check):
            return target
        partial = target.with_name(target.name + ".partial")
        _remove(partial)  # left by a run that died while building
        try:
            with reporting_disk_full(target, partial, advice=FULL_DISK_ADVICE):
                build(partial)
                record_manifest(partial, partial / MANIFEST_NAME)
        except BaseException:
            _remove(partial)
            raise
        _remove(target)
        os.replace(partial, target)
    return target


@contextlib.contextmanager
def cached_file(target: Path, check: Callable[[Path], object]) -> Iterator[bool]:
    """Around the code that reads or builds the cache file `target` when a library writes it in place itself (datasets'
    Arrow cache files: written to a temporary file and moved): under the entry's lock, a damaged `target` is removed
    (warned about), the block is told whether it must build `target`, and the manifest of what it built is recorded
    when it leaves."""
    from filelock import FileLock

    manifest = target.with_name(target.name + ".manifest.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        build = not (target.exists() and _usable(target, manifest, check))
        if build:
            manifest.unlink(missing_ok=True)
        with reporting_disk_full(target, advice=FULL_DISK_ADVICE):
            yield build
            if build:
                record_manifest(target, manifest)


def save_model_folder(model, folder: Path) -> None:
    """`model.save_pretrained(folder)` on whichever process builds a cache entry: transformers writes a model's weights
    only on global rank 0 once torch.distributed runs, so an entry built by another machine's process (its own
    filesystem) would hold a config and no weights. The config, then the weights with safetensors."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))
