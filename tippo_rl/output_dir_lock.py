"""The lock a run holds on its output folder, so that two runs never write into the same one.

Every recipe that writes into an `output_dir` (recipes/sft.py, ppo.py, polishppo.py, evaluate.py) runs inside
`output_dir_lock(output_dir)`. The lock is the file `output_dir/_run.lock` (`_`: skipped by the Trainer's Hub uploads,
as the `_incomplete-` staging folders are), holding the run's PID, host, start time and command, and locked with
`flock` for as long as the run lives. A second run finds it locked and stops with one line naming the first run; a
run that was killed leaves the file, but not the `flock` (the kernel drops it with the process), and the next run
takes it over with a warning. Under accelerate or torchrun only the main process (`RANK` 0) takes the lock: the
others write nothing of their own there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputDirInUseError


try:
    import fcntl
except ImportError:  # Windows: no flock; the PID check alone decides
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_NAME = "_run.lock"


def _owner(fd: int) -> dict:
    """The run recorded in an open lock file: `{pid, host, started, command}`, or {} when empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        owner = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    command = str(owner.get("command", "?"))
    command = command if len(command) <= 100 else command[:99] + "…"
    return (
        f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started', '?')}: "
        f"{command})"
    )


def _is_running(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lock(fd: int) -> bool:
    """`flock` the file without waiting: True when this process has it, False when another one holds it. A file
    system without `flock` (some network ones) counts as locked by us: the PID check below still applies."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    return True


def _acquire(path: Path) -> int:
    """Open, lock and claim `path`; returns its open descriptor. Raises `OutputDirInUseError` if a live run holds it."""
    this_host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _lock(fd)
        owner = _owner(fd)
        for _ in range(20):  # a run that has just locked the file writes its record at once
            if owner or locked:
                break
            time.sleep(0.05)
            owner = _owner(fd)
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the run that held it released it (deleted the file) meanwhile: start over
            os.close(fd)
            continue
        pid, host = owner.get("pid"), owner.get("host")
        in_use = not locked or (
            isinstance(pid, int) and pid != os.getpid() and (host != this_host or _is_running(pid))
        )
        if in_use:
            os.close(fd)
            # Not locked by it: it runs on another host (whose PIDs cannot be checked from here), the file system has
            # no flock, or its PID was reused. The user can tell.
            unsure = f" (if it no longer runs, delete {path})" if locked else ""
            raise OutputDirInUseError(
                f"output_dir '{path.parent}' is in use by another run: {_describe(owner)}; wait for it to end or "
                f"choose another --output_dir{unsure}"
            )
        if pid is not None:
            logger.warning(
                "output_dir '%s': taking over the lock of a run that no longer runs (%s)",
                path.parent,
                _describe(owner),
            )
        return fd


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike) -> Iterator[Path | None]:
    """Hold `output_dir/_run.lock` for the duration of the block (created with `output_dir` when missing), or nothing
    in a process other than the main one (`RANK` > 0 under accelerate or torchrun). Yields the lock file's path (None
    in the other processes).

    Raises:
        OutputDirInUseError: another live run holds it; the message names that run's PID, host and command.
    """
    if os.environ.get("RANK", "0") != "0":
        yield None
        return
    folder = Path(output_dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path)
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
        yield path
    finally:
        # Deleted while still locked, so a run waiting on this file sees that it went (`_acquire` starts over).
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink()
        os.close(fd)
        if created:
            _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this run created and left empty (a run stopped before writing anything)."""
    with contextlib.suppress(OSError):
        folder.rmdir()
