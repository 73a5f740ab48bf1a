"""Killing a recipe for real: run `recipes/<name>.py`'s `main` in a forked child process that SIGKILLs itself at a
chosen moment (no cleanup, no `finally`, no flush: what a preempted job or the OOM killer does), then compare what
is on disk. Forking skips the imports (seconds per child), so a kill-and-resume test costs its training steps only."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import torch
from recipe_loading import load_recipe
from safetensors.torch import load_file
from transformers import Trainer
from trl import TrlParser

import tippo_rl.rewards
from tippo_rl import TIPPoProcessor


def _kill_now():
    os.kill(os.getpid(), signal.SIGKILL)


def _install(moment: str | None, step: int | None) -> None:
    """Patch, in the child only, the place where it dies.

    - `mid_step`: at the start of the optimizer step after `step` (its rollouts or batch half consumed);
    - `checkpoint_write`: while `checkpoint-<step>` is written (weights and optimizer done, RNG and state not);
    - `final_save`: in the final save, after the weights, before the processor.
    """
    if moment == "mid_step":
        original = Trainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step == step:
                _kill_now()
            return original(self, *args, **kwargs)

        Trainer.training_step = training_step
    elif moment == "checkpoint_write":
        original_rng = Trainer._save_rng_state

        def _save_rng_state(self, output_dir):
            if self.state.global_step == step:
                _kill_now()
            return original_rng(self, output_dir)

        Trainer._save_rng_state = _save_rng_state
    elif moment == "final_save":
        original_save = TIPPoProcessor.save_pretrained

        def save_pretrained(self, save_directory, *args, **kwargs):
            if "checkpoint-" not in str(save_directory):
                _kill_now()
            return original_save(self, save_directory, *args, **kwargs)

        TIPPoProcessor.save_pretrained = save_pretrained
    elif moment is not None:
        raise ValueError(moment)


def _child(recipe: str, parser_classes: tuple, arguments: list[str], moment: str | None, step: int | None) -> None:
    torch.set_num_threads(1)
    tippo_rl.rewards.BUILTIN_REWARDS["semantic"] = "killing:WordOverlap"
    module = load_recipe(recipe)
    _install(moment, step)
    module.main(
        *TrlParser(tuple(getattr(module, name) for name in parser_classes)).parse_args_and_config(args=arguments)
    )


def run_recipe(
    recipe: str,
    parser_classes: tuple[str, ...],
    arguments: list[str],
    moment: str | None = None,
    step: int | None = None,
) -> int:
    """Run `recipes/<recipe>.py` in a forked child; returns its exit code (−9: it was SIGKILLed)."""
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(recipe, parser_classes, arguments, moment, step)
    )
    process.start()
    process.join(timeout=600)
    return process.exitcode


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name].double() - b[name].double()).abs().max().item() for name in a)


class WordOverlap:
    """Stands in for the built-in `semantic` reward (Eq. 8) in the children, so no embedder is loaded or distilled: the
    share of reference words the completion contains. What resuming must restore does not depend on the reward."""

    __name__ = "semantic"

    def __init__(self, **embedder_settings):
        pass

    def __call__(self, prompts, completions, reference, **kwargs):
        return [
            len(set(c.split()) & set(r.split())) / max(len(set(r.split())), 1) for c, r in zip(completions, reference)
        ]
