"""The reward plug-in mechanism: resolving a reward spec into a callable, and scoring a batch with a list of them.

A plug-in is any callable ``f(prompts, completions, **columns) -> list[float | None]``, called exactly as TRL's
``GRPOTrainer`` calls a reward function (keyword arguments ``prompts``, ``completions``, ``completion_ids``,
``trainer_state`` and every dataset column, e.g. ``reference``, ``title``, ``images``).

``load_reward`` turns a spec (``literal``, ``semantic``, ``package.module:function``, a dotted path as TRL's scripts
write it, ``trl.rewards.think_format_reward``, or ``path/to/file.py:function``) into a plug-in, building it first when
the spec names a class or a factory (``trl.rewards.get_repetition_penalty_reward``) with its keyword arguments;
``check_reward_spec`` does the same up to the building, so a configuration can be checked before anything is loaded;
``score_rewards`` calls a list of plug-ins (async ones too) on a batch, as TRL's GRPOTrainer does, and checks what they
return. Every problem with a plug-in is a ``RewardError``, one line naming the reward.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import RewardError


logger = logging.getLogger(__name__)


BUILTIN_REWARDS: dict[str, str] = {
    "literal": "tippo_rl.rewards:literal",
    "semantic": "tippo_rl.rewards:SemanticReward",
    "repetition_penalty": "tippo_rl.rewards:RepetitionPenalty",
    "cider": "tippo_rl.rewards:CIDErDReward",
}


# What the trainers pass to every reward, by keyword, besides the dataset's columns (TRL's GRPOTrainer convention).
REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra")


def _first_line(error: BaseException) -> str:
    """`Type: message` of an error, its first line only (the message of a RewardError is one line)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _abbreviated(value: Any, width: int = 60) -> str:
    """`repr` of a prompt or completion, cut to about `width` characters."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # TRL's conversational form
        value = value[-1].get("content", value)
    if isinstance(value, str) and len(value) > width:
        value = value[: width - 1] + "…"
    return f"{value!r:.{width + 10}}"


def reward_name(reward_func: Callable) -> str:
    """The name a reward is logged under: a function's ``__name__``, else its class name.

    Same rule as TRL's ``get_callable_name`` (``functools.partial`` unwrapped), so names match TRL's logs.
    """
    while isinstance(reward_func, functools.partial):
        reward_func = reward_func.func
    return getattr(reward_func, "__name__", type(reward_func).__name__)


def _reward_source(reward_func: Callable) -> str:
    """Where a reward came from, for error messages: its spec if load_reward made it, else module:qualname."""
    spec = getattr(reward_func, "reward_spec", None)
    if spec:
        return spec
    target = reward_func if inspect.isfunction(reward_func) or inspect.isclass(reward_func) else type(reward_func)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', reward_name(reward_func))}"


def _import_module(module_path: str, spec: str):
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as error:
        top = module_path.split(".")[0]
        if error.name is not None and not (module_path == error.name or module_path.startswith(error.name + ".")):
            raise RewardError(
                f"reward {spec!r}: module {module_path!r} was found but imports {error.name!r}, which is not installed"
            ) from error
        cwd = os.getcwd()
        in_cwd = os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, top + ".py"))
        if in_cwd and cwd not in sys.path:
            # A launched script (accelerate launch recipes/x.py) has its own folder on sys.path, not the current
            # one; resolve against the current directory as `python -m` would. Appended, so it never shadows an
            # installed package.
            sys.path.append(cwd)
            return _import_module(module_path, spec)
        raise RewardError(
            f"reward {spec!r}: no module named {module_path!r} (looked in sys.path and {cwd}); "
            f"for a file, write 'path/to/file.py:function'"
        ) from error
    except Exception as error:  # the plug-in's own code failed on import: a syntax error, a failing statement
        raise RewardError(f"reward {spec!r}: importing {module_path!r} raised {_where(error)}") from error


def _import_file(file_path: str, spec: str):
    path = Path(file_path).expanduser().resolve()
    if not path.is_file():
        raise RewardError(f"reward {spec!r}: file {str(path)!r} does not exist")
    # A unique module name, the same in every process of a run, registered in sys.modules: dataclasses and
    # pickling look classes and functions up there by their __module__.
    module_name = f"tippo_rl_reward_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[module_name]
        if isinstance(error, Exception):  # the plug-in's own code failed: a syntax error, a failing statement
            raise RewardError(f"reward {spec!r}: loading {str(path)!r} raised {_where(error)}") from error
        raise
    return module


def _location_and_name(spec: str) -> tuple[str, str] | None:
    """("package.module" or "path/file.py", "name") of a spec, or None if it is neither form."""
    if ":" in spec:
        location, _, attribute = spec.rpartition(":")
    elif "." in spec and not spec.endswith(".py") and "/" not in spec and os.sep not in spec:
        location, _, attribute = spec.rpartition(".")  # a dotted path, as TRL's scripts name rewards
    else:
        return None
    return (location, attribute) if location and attribute else None


def is_reward_factory(function: Callable) -> bool:
    """A function that builds a reward (``trl.rewards.get_repetition_penalty_reward(ngram_size, max_penalty)``) rather
    than being one: it takes neither ``completions`` nor ``completion_ids`` nor ``**kwargs``, which TRL passes to every
    reward function."""
    if not inspect.isfunction(function):
        return False
    parameters = inspect.signature(function).parameters
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    return not takes_any and "completions" not in parameters and "completion_ids" not in parameters


def _where(error: BaseException) -> str:
    """`Type: message (file.py, line N, in f)`: an error and the innermost line of Python that raised it, for a
    one-line message that replaces the traceback."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith("<")]
    if not frames or isinstance(error, SyntaxError):  # a SyntaxError's message names its file and line
        return _first_line(error)
    frame = frames[-1]
    return f"{_first_line(error)} ({frame.filename}, line {frame.lineno}, in {frame.name})"


def _resolve(spec: str) -> Any:
    """What a spec names (a function, a class, a factory or another callable), imported but not built."""
    parts = _location_and_name(BUILTIN_REWARDS.get(spec, spec))
    if parts is None:
        raise RewardError(
            f"unknown reward {spec!r}: use a built-in name ({', '.join(BUILTIN_REWARDS)}), "
            "'package.module:function', a dotted path 'package.module.function' or 'path/to/file.py:function'"
        )
    location, attribute = parts
    is_file = location.endswith(".py") or "/" in location or os.sep in location
    module = _import_file(location, spec) if is_file else _import_module(location, spec)
    if not hasattr(module, attribute):
        defined = sorted(
            name
            for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        )
        raise RewardError(
            f"reward {spec!r}: {location!r} defines no {attribute!r}; "
            f"it defines: {', '.join(defined) if defined else 'no public functions or classes'}"
        )
    reward = getattr(module, attribute)
    if not callable(reward):
        raise RewardError(
            f"reward {spec!r} is not callable (got {type(reward).__name__} {reward!r:.40}); name a function or a class"
        )
    return reward


def check_reward_signature(reward: Callable, label: str) -> None:
    """Raise `RewardError` unless `reward` (a reward function, or an instance whose `__call__` is one) can be called as
    the trainers call it: every argument by keyword (`prompts`, `completions`, `completion_ids`, `trainer_state`,
    `log_metric`, `log_extra` and each dataset column), so it must take `**kwargs`. A class is checked by its
    `__call__`, without building it."""
    target = reward.__call__ if inspect.isclass(reward) else reward
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: left to the call
        return
    if inspect.isclass(reward) and parameters and parameters[0].kind is not inspect.Parameter.VAR_POSITIONAL:
        parameters = parameters[1:]  # self
    positional_only = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    what = f"{reward.__name__}.__call__" if inspect.isclass(reward) else reward_name(reward)
    what += str(inspect.Signature(parameters))
    trl = "a reward function is f(prompts, completions, **kwargs), as in TRL"
    if positional_only:
        raise RewardError(
            f"reward {label!r}: {what} takes {', '.join(positional_only)} positionally only; the trainer passes every "
            f"argument by keyword ({trl})"
        )
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise RewardError(
            f"reward {label!r}: {what} takes no **kwargs; the trainer passes {', '.join(REWARD_ARGUMENTS)} and every "
            f"dataset column by keyword ({trl})"
        )


def check_reward_spec(spec: str, **init_kwargs) -> None:
    """Check a reward spec as far as can be done without building anything (a configuration's `reward_funcs`, before a
    model is loaded): the module or file exists and imports, it defines the name, a class or a factory can take
    `init_kwargs`, and a reward function's (or a class's `__call__`) signature can take the trainer's keyword arguments.

    Raises:
        RewardError: one line naming the spec and what is wrong.
    """
    reward = _resolve(spec)
    if inspect.isclass(reward) or is_reward_factory(reward):
        try:
            inspect.signature(reward).bind(**init_kwargs)
        except TypeError as error:
            raise RewardError(_cannot_build(reward, spec, error, init_kwargs)) from error
        except ValueError:  # no signature to check: left to building it
            pass
    elif init_kwargs:
        raise RewardError(_takes_no_arguments(spec, init_kwargs))
    if not is_reward_factory(reward):  # a factory's reward is checked once built (load_reward)
        check_reward_signature(reward, spec)


def _cannot_build(reward: Callable, label: str, error: Exception, init_kwargs: dict) -> str:
    """The message for a class or factory that cannot be called with `init_kwargs`."""
    if inspect.isclass(reward):
        return f"reward {label!r}: cannot construct {reward.__name__}: {error}"
    hint = (
        ""
        if init_kwargs
        else f" ({reward.__name__}{inspect.signature(reward)} takes no completions and no **kwargs, so it is taken for "
        "a factory; a reward function is f(prompts, completions, **kwargs))"
    )
    return f"reward {label!r}: cannot build the reward with factory {reward.__name__}: {error}{hint}"


def _takes_no_arguments(label: str, init_kwargs: dict) -> str:
    return (
        f"reward {label!r} is a reward function (it takes the completions), not a class or a factory, so it takes no "
        f"constructor arguments (got {', '.join(init_kwargs)}); per-sample inputs come from dataset columns"
    )


def load_reward(spec: str | Callable, **init_kwargs) -> Callable:
    """Resolve a reward spec into a plug-in ``f(prompts, completions, **columns) -> list[float | None]``.

    Spec forms:

    * a built-in name: ``literal`` (Eq. 7), ``semantic`` (Eq. 8, :class:`SemanticReward`) or
      ``repetition_penalty`` (:class:`RepetitionPenalty`, TRL's n-gram repetition penalty);
    * ``package.module:name``, or the dotted path ``package.module.name`` (as TRL's scripts write it, e.g.
      ``trl.rewards.think_format_reward``): imported like ``python -m`` would (``sys.path``, then the current
      directory), e.g. ``rewards.length_penalty:length_penalty`` from the repository root;
    * ``path/to/file.py:name``: the file is loaded directly, no package needed;
    * a callable or a class, used as is.

    What the spec names may be a reward function (async ones too: ``async def f(prompts, completions, ...)``), a class
    (instantiated with ``init_kwargs``: ``load_reward("semantic", model_name_or_path=...)``) or a factory, a function
    that takes no ``completions`` and returns the reward (called with ``init_kwargs``:
    ``load_reward("trl.rewards.get_repetition_penalty_reward", ngram_size=2)``). A reward function takes no
    ``init_kwargs``, and must take ``**kwargs`` (:func:`check_reward_signature`). The result carries ``reward_spec``
    (the spec) for error messages.

    Args:
        spec: see above.
        **init_kwargs: arguments of the class or factory the spec names.

    Returns:
        The plug-in callable.

    Raises:
        RewardError: the spec is not one of the forms above; the module or file cannot be found or raised on import;
            the module has no such name (the message lists what it defines); the object is not callable; its
            constructor or factory rejected ``init_kwargs``, or they were given for a reward function; the reward's
            signature cannot take the trainer's keyword arguments.
    """
    if callable(spec) and not isinstance(spec, str):
        reward, source = spec, None
    else:
        reward, source = _resolve(spec), spec

    label = source or getattr(reward, "__name__", type(reward).__name__)
    if inspect.isclass(reward) or is_reward_factory(reward):
        if inspect.isclass(reward):
            check_reward_signature(reward, label)
        try:
            built = reward(**init_kwargs)
        except TypeError as error:
            raise RewardError(_cannot_build(reward, label, error, init_kwargs)) from error
        if not callable(built):
            raise RewardError(
                f"reward {label!r}: factory {reward.__name__} returned {type(built).__name__}, not a reward function"
            )
        reward = built
    elif init_kwargs:
        raise RewardError(_takes_no_arguments(source or reward_name(reward), init_kwargs))
    check_reward_signature(reward, label)
    if source is not None:
        try:
            reward.reward_spec = source
        except AttributeError:  # bound methods, builtins: the message falls back to module:qualname
            pass
    return reward


def is_async_reward(reward_func: Callable) -> bool:
    """An ``async def`` reward function, or an object whose ``__call__`` is one (TRL runs them concurrently)."""
    while isinstance(reward_func, functools.partial):
        reward_func = reward_func.func
    return inspect.iscoroutinefunction(reward_func) or inspect.iscoroutinefunction(type(reward_func).__call__)


def _run_concurrently(coroutines: list) -> list:
    """Await `coroutines` together (asyncio.gather) and return their results, in order; from a thread of its own
    when this one already runs an event loop (a notebook)."""

    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def _as_reward_value(value: Any, name: str, source: str, sample: int) -> float:
    """One returned value as a float: None (TRL: the reward does not apply to this sample) is NaN; NaN and inf are
    kept, for `_check_finite` to report every sample at once."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise RewardError(
            f"reward {name!r} ({source}) returned {value!r:.60} ({type(value).__name__}) for sample {sample}; "
            "expected a float, or None when the reward does not apply"
        )
    return float(value)


def _check_finite(
    values: list, row: list[float], name: str, source: str, prompts: Sequence[Any], completions: Sequence[Any]
) -> None:
    """Raise `RewardError` if the reward returned a float NaN or inf (a bug in the reward: None is how a reward says
    that it does not apply), naming the samples and the first one's prompt and completion."""
    bad = [i for i, (value, number) in enumerate(zip(values, row)) if value is not None and not math.isfinite(number)]
    if not bad:
        return
    first = bad[0]
    shown = ", ".join(map(str, bad[:10])) + (", …" if len(bad) > 10 else "")
    returned = sorted({str(row[i]) for i in bad})
    raise RewardError(
        f"reward {name!r} ({source}) returned {' and '.join(returned)} for {len(bad)} of {len(row)} samples ({shown}); "
        f"sample {first}: prompt {_abbreviated(prompts[first])}, completion {_abbreviated(completions[first])}; "
        "rewards must be finite (None for a sample the reward does not apply to)"
    )


def score_rewards(
    reward_funcs: Sequence[Callable],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: dict[str, Sequence[Any]] | None = None,
    trainer_state: Any = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    log_extra: Callable[[str, list], None] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Call every reward plug-in on a batch, as TRL's GRPOTrainer does, and check what each returns.

    Each plug-in is called as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_metric=...,
    log_extra=..., **columns)``; async plug-ins are awaited together (``asyncio.gather``) after the others.
    A plug-in may return ``None`` for a sample it does not apply to (TRL's convention); that entry is NaN in
    the result, so combine rewards with ``torch.nansum(rewards, dim=0)``.

    Args:
        reward_funcs: plug-ins, e.g. from :func:`load_reward`.
        prompts: length batch.
        completions: generated texts, length batch.
        columns: dataset columns, each a list of length batch (tippo_rl passes ``reference``, ``title``, ``images``).
        trainer_state: passed through (TRL passes its ``TrainerState``, for rewards shaped by training progress).
        completion_ids: token ids of the completions, passed through.
        log_metric: ``log_metric(name, value)`` for a reward to log a scalar (the trainers log its mean under ``name``);
            None: a no-op.
        log_extra: ``log_extra(column, values)`` for a reward to add a column (one value per sample) to the logged
            completions; None: a no-op.

    Returns:
        ``(rewards, names)``: ``rewards`` a float32 ``torch.Tensor`` of shape ``(n_funcs, batch)`` on the CPU,
        NaN where a plug-in returned None; ``names`` the plug-ins' names (:func:`reward_name`).

    Raises:
        ValueError: inconsistent batch inputs.
        RewardError: a reward raised (the original error is chained), returned the wrong number of values, something
            that is not a list of numbers, or a NaN or inf (a float; None is "does not apply").
    """
    columns = dict(columns or {})
    batch = len(completions)
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts but {batch} completions")
    for column, values in columns.items():
        if len(values) != batch:
            raise ValueError(f"column {column!r} has {len(values)} values but the batch has {batch} completions")

    names = [reward_name(f) for f in reward_funcs]
    kwargs = dict(
        prompts=prompts,
        completions=completions,
        completion_ids=completion_ids,
        trainer_state=trainer_state,
        log_metric=log_metric or (lambda name, value: None),
        log_extra=log_extra or (lambda column, values: None),
        **columns,
    )
    outputs: list[Any] = [None] * len(reward_funcs)
    pending = []  # (index, coroutine) of async rewards, awaited together as TRL does
    for index, reward_func in enumerate(reward_funcs):
        try:
            if is_async_reward(reward_func):
                pending.append((index, reward_func(**kwargs)))
            else:
                outputs[index] = reward_func(**kwargs)
        except Exception as error:
            outputs[index] = error
    if pending:
        for (index, _), result in zip(pending, _run_concurrently([coroutine for _, coroutine in pending])):
            outputs[index] = result

    rows = []
    for reward_func, name, values in zip(reward_funcs, names, outputs):
        source = _reward_source(reward_func)
        if isinstance(values, Exception):
            raise RewardError(
                f"reward {name!r} ({source}) raised on the batch of {batch} samples: {_where(values)}"
            ) from values
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or (not isinstance(values, Sequence) and not hasattr(values, "__array__")):
            raise RewardError(
                f"reward {name!r} ({source}) returned a {type(values).__name__}; expected a list of {batch} floats"
            )
        values = list(values)
        if len(values) != batch:
            raise RewardError(
                f"reward {name!r} ({source}) returned {len(values)} values for a batch of {batch} completions; "
                "it must return exactly one per completion"
            )
        rows.append([_as_reward_value(v, name, source, i) for i, v in enumerate(values)])
        _check_finite(values, rows[-1], name, source, prompts, completions)

    rewards = torch.tensor(rows, dtype=torch.float32).reshape(len(reward_funcs), batch)
    if reward_funcs and batch and torch.isnan(rewards).all(0).any():
        sample = int(torch.isnan(rewards).all(0).nonzero()[0])
        logger.warning(  # as TRL's GRPOTrainer: the sample's return is then 0
            "all reward functions returned None for sample %d (prompt %r, completion %r); its return counts as 0",
            sample,
            prompts[sample],
            completions[sample],
        )
    return rewards, names
