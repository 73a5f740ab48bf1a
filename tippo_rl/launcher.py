"""`tippo-launch`: `accelerate launch` that keeps a recipe's own exit status and one-line errors, and whose workers stop
when it is stopped.

`accelerate launch` turns a recipe's one-line error (exit status 2) into exit status 1 and a traceback of its own
(`CalledProcessError`, or torch's `ChildFailedError` report under DDP). `tippo-launch` takes exactly `accelerate
launch`'s arguments, runs it in this process, and exits with the first failed worker's status, without a traceback (the
worker's own line is above). Sent SIGTERM or SIGINT, it stops every worker (the same signal, then SIGKILL after
`GRACE_SECONDS`) and exits with 128 + the signal; checkpoints are written atomically, so the last complete one stays.

A worker started by a plain `accelerate launch` stops when its launcher dies, killed or not (`stop_with_launcher`, which
every recipe calls: Linux's parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys


GRACE_SECONDS = 20  # a worker's time to stop after SIGTERM before it is killed
LAUNCHER_VARIABLES = ("ACCELERATE_CONFIG_DS_FIELDS", "ACCELERATE_MIXED_PRECISION", "LOCAL_RANK", "ACCELERATE_USE_CPU")
PR_SET_PDEATHSIG = 1  # prctl(2)


def stop_with_launcher() -> None:
    """In a process started by a launcher (`accelerate launch`, `torchrun`, `tippo-launch`): ask Linux to send it SIGTERM
    when its launcher dies, so that killing the launcher never leaves a worker training and writing on its own. A no-op
    elsewhere (not launched, or not Linux)."""
    if not sys.platform.startswith("linux") or not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the call above: nobody is left to send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def stop_workers(signum: int, frame=None) -> None:
    """Signal handler: the same signal to every process this one started, SIGKILL to those still running after
    `GRACE_SECONDS`, then exit with 128 + the signal."""
    import psutil

    signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C while the workers stop does not leave them orphaned
    workers = psutil.Process().children(recursive=True)
    for worker in workers:
        try:
            worker.send_signal(signum)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(workers, timeout=GRACE_SECONDS)
    for worker in alive:
        try:
            worker.kill()
        except psutil.NoSuchProcess:
            pass
    print(f"tippo-launch: stopped by signal {signum}; workers stopped", file=sys.stderr)
    os._exit(128 + signum)


def failed_worker_status(error: BaseException) -> int | None:
    """The exit status of the worker whose failure `error` (accelerate's or torch elastic's) reports, else None."""
    if isinstance(error, subprocess.CalledProcessError):
        return error.returncode
    failures = getattr(error, "failures", None)  # torch.distributed.elastic's ChildFailedError
    if failures:
        _, first = min(failures.items(), key=lambda item: item[1].timestamp)
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode  # killed by signal s: exitcode −s
    signal_number = getattr(error, "sigval", None)  # torch.distributed.elastic's SignalException
    return 128 + int(signal_number) if signal_number is not None else None


def main(argv: list[str] | None = None) -> int:
    """`tippo-launch [accelerate launch options] recipes/<recipe>.py [recipe options]`."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    parser = launch_command_parser()
    parser.prog = "tippo-launch"
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_workers)  # torch elastic installs its own while it runs (it stops its workers too)
    try:
        launch_command(args)
    except (Exception, KeyboardInterrupt) as error:
        status = failed_worker_status(error)
        if status is None:
            raise
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
