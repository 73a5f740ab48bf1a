"""The tools outside Python that the metrics run (Java for METEOR and the PTB tokenizer, optional packages), and
the errors that say what to install when one is missing."""

from __future__ import annotations

import importlib
import re
import shutil


_JAVA_HINT = (
    "install a Java runtime and make sure `java` is on PATH "
    "(Debian/Ubuntu: `apt-get install default-jre-headless`; conda: `conda install openjdk`)"
)


class ExternalToolError(RuntimeError):
    """A tool the metrics run (Java, the METEOR jar, the PTB tokenizer, a BERTScore model) failed."""


class JavaNotFoundError(ExternalToolError):
    """``java`` is not on PATH, but METEOR or PTB tokenisation needs it."""


def _require_java(what: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(f"{what} needs Java, but `java` is not on PATH: {_JAVA_HINT}.")
    return java


def _import(module: str, package: str):
    """Import an optional dependency, or say which package to install (they come with ``tippo_rl[eval]``)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name.split(".")[0]):
            raise  # something inside the package is missing: not ours to explain
        raise ExternalToolError(
            f"{package} is not installed; install the evaluation extras with `pip install 'tippo_rl[eval]'` "
            f"(or `pip install {package}`)"
        ) from e


# Characters a line-based protocol (METEOR's stdio, PTBTokenizer -preserveLines) reads as a line break;
# one inside a text would split it and shift every later answer by one line.
_LINE_BREAKS_RE = re.compile("[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _one_line(text: str) -> str:
    return _LINE_BREAKS_RE.sub(" ", text)
