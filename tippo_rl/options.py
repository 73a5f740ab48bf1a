"""The options of tippo_rl's dataclasses (the recipes' data, model and evaluation arguments, the trainers' configs) and
the checks their `__post_init__`s share.

- [`option`]: a field with its default and the `--help` text `HfArgumentParser` shows for it.
- [`check_choice`]: a value that must be one of a few names.
- [`parse_json_option`]: a dict option that the command line gives as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import MISSING, field
from typing import Any


def option(default: Any = MISSING, help: str = "", **field_options: Any) -> Any:
    """A dataclass field that is a command-line option: `field(default=default, metadata={"help": help})`, the form
    `HfArgumentParser` reads its default and `--help` text from. `field_options` go to `dataclasses.field`
    (`default_factory` for a list or dict default)."""
    return field(default=default, metadata={"help": help}, **field_options)


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
    """Raise `ValueError` naming option `name` when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def parse_json_option(name: str, value: Any) -> Any:
    """The value of option `name`, which takes a JSON object (`generation_kwargs`, …): parsed when it is text, as the
    command line gives it; as it is otherwise (a YAML mapping, a dict, None)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a JSON object, got {value!r}: {error}") from error
