"""The private `transformers.Trainer` methods the TIPPo trainers override: each is a break risk on a new release, so
the set is kept small, listed in docs/architecture.md, and each override says in a `# Private:` comment why no public
hook serves."""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from tippo_rl.trainer.polishppo_trainer import PolishPPOTrainer
from tippo_rl.trainer.ppo_trainer import PPOTrainer
from tippo_rl.trainer.sft_trainer import TIPPoSFTTrainer


PPO_PRIVATE_OVERRIDES = {"_load_from_checkpoint", "_load_best_model"}
ALLOWED = {
    TIPPoSFTTrainer: set(),
    PPOTrainer: PPO_PRIVATE_OVERRIDES,
    PolishPPOTrainer: PPO_PRIVATE_OVERRIDES,
}


def private_trainer_overrides(trainer_class: type) -> dict[str, type]:
    """{name: the TIPPo class defining it} for each private method of `transformers.Trainer` that a TIPPo class in
    `trainer_class`'s MRO defines (TRL's own overrides not counted)."""
    private = {
        name
        for name, value in vars(Trainer).items()
        if name.startswith("_") and not name.startswith("__") and inspect.isfunction(value)
    }
    found = {}
    for cls in reversed(trainer_class.__mro__):
        if cls.__module__.startswith("tippo_rl."):
            found.update({name: cls for name in vars(cls) if name in private})
    return found


@pytest.mark.parametrize("trainer_class", list(ALLOWED), ids=lambda cls: cls.__name__)
def test_only_the_listed_private_trainer_methods_are_overridden_each_saying_why(trainer_class):
    overrides = private_trainer_overrides(trainer_class)
    assert set(overrides) == ALLOWED[trainer_class]
    for name, cls in overrides.items():
        module_lines = inspect.getsourcelines(inspect.getmodule(cls))[0]
        first_line = inspect.getsourcelines(vars(cls)[name])[1]  # 1-based: the comment is the line before
        assert module_lines[first_line - 2].strip().startswith("# Private: "), f"{cls.__name__}.{name}"
