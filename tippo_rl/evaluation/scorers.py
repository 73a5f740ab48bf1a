"""The two scorers that run a model or a program rather than count n-grams: METEOR 1.5 (the coco-caption jar, in a
JVM) and BERTScore (the ``bert-score`` package)."""

from __future__ import annotations

import collections
import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Hashable, Mapping
from typing import Any

from .external_tools import ExternalToolError, _import, _one_line, _require_java


# ----------------------------------------------------------------------------------------------------------
# METEOR
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def _make_closable_meteor_class():
    # Built lazily (once) so that importing this module does not import pycocoevalcap.
    Meteor = _import("pycocoevalcap.meteor.meteor", "pycocoevalcap").Meteor

    class _ClosableMeteor(Meteor):
        """pycocoevalcap's Meteor with a close() that cannot hang and a drained stderr pipe.

        Upstream ``__del__`` takes the scorer's lock before killing the JVM; if ``compute_score`` raised while
        holding it (e.g. the JVM died), that lock is never released and garbage collection blocks forever.
        Upstream also never reads the JVM's stderr, so a chatty JVM could fill the pipe and stall.
        """

        def __init__(self, low_priority: bool = False):
            nice = shutil.which("nice") if low_priority else None
            if nice is None:
                super().__init__()
            else:  # upstream's __init__, its command behind `nice -n 19`
                upstream = sys.modules[Meteor.__module__]
                self.meteor_cmd = [nice, "-n", "19", "java", "-jar", "-Xmx2G", upstream.METEOR_JAR]
                self.meteor_cmd += ["-", "-", "-stdio", "-l", "en", "-norm"]
                self.meteor_p = subprocess.Popen(
                    self.meteor_cmd,
                    cwd=os.path.dirname(os.path.abspath(upstream.__file__)),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                self.lock = threading.Lock()
            self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
            self._drain = threading.Thread(target=self._drain_stderr, name="meteor-stderr", daemon=True)
            self._drain.start()

        def _drain_stderr(self):
            for line in iter(self.meteor_p.stderr.readline, b""):
                self.stderr_tail.append(line.decode(errors="replace").rstrip())

        def close(self):
            proc = getattr(self, "meteor_p", None)
            if proc is None:
                return
            self.meteor_p = None
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            proc.kill()
            proc.wait()
            # stderr is closed by the drain thread's EOF; join briefly so the file object is released.
            self._drain.join(timeout=5)
            try:
                proc.stderr.close()
            except OSError:
                pass

        def __del__(self):
            self.close()

    return _ClosableMeteor


class MeteorScorer:
    """METEOR 1.5 (the coco-caption jar, ``-l en -norm``) through pycocoevalcap's ``Meteor``, with its JVM closed.

    Starting the JVM loads a 60 MB paraphrase table (several seconds), so one scorer can be reused for several
    :func:`compute_metrics` calls (``meteor_scorer=``). Use it as a context manager, or call :meth:`close`.

    Args:
        timeout: seconds one :meth:`compute_score` call may take before the JVM is killed; ``None``:
            10 minutes plus 0.1 s per sample.
        low_priority: run the JVM at the lowest CPU priority (`nice -n 19`, where there is a `nice`): for a scorer
            started ahead of time beside other work (recipes/demo.py starts one while PolishPPO trains), whose load
            (its threads take every core for ~10 s) then uses only the CPU time the other work leaves. The scores are
            the same.
    """

    def __init__(self, timeout: float | None = None, low_priority: bool = False):
        _require_java("METEOR")
        self.timeout = timeout
        self._meteor = _make_closable_meteor_class()(low_priority)
        self._broken = False

    def compute_score(self, gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]]):
        """pycocoevalcap's ``Meteor.compute_score``: returns ``(corpus_score, [per-sample scores])``.

        Line breaks in any text become spaces and ``|||`` is removed from references too (upstream removes it
        from the hypothesis only): both are the jar's stdio protocol separators and would shift every score.
        """
        if self._meteor.meteor_p is None or self._broken:
            raise ExternalToolError("this MeteorScorer is closed (or its JVM failed); create a new one")
        gts = {k: [_one_line(r).replace("|||", "") for r in v] for k, v in gts.items()}
        res = {k: [_one_line(h) for h in v] for k, v in res.items()}
        timeout = self.timeout if self.timeout is not None else 600 + 0.1 * len(res)
        proc = self._meteor.meteor_p
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            score, scores = self._meteor.compute_score(gts, res)
        except (ValueError, OSError) as e:
            # A dead JVM shows up as an empty line (float('') fails) or a broken pipe.
            timed_out = not watchdog.is_alive()
            self._broken = True
            self.close()
            if timed_out:
                raise ExternalToolError(f"the METEOR jar did not answer within {timeout:g} s and was stopped") from e
            tail = " | ".join(self._meteor.stderr_tail) or "nothing on stderr"
            raise ExternalToolError(f"the METEOR jar failed ({type(e).__name__}: {e}); java said: {tail}") from e
        finally:
            watchdog.cancel()
        return float(score), [float(s) for s in scores]

    def close(self) -> None:
        """Stop the JVM. Safe to call more than once."""
        meteor = getattr(self, "_meteor", None)
        if meteor is not None:
            meteor.close()

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


# ----------------------------------------------------------------------------------------------------------
# BERTScore
# ----------------------------------------------------------------------------------------------------------


def _bertscore(
    cands: list[str],
    refs: list[list[str]],
    *,
    model: str | None,
    num_layers: int | None,
    lang: str,
    device: str | None,
    batch_size: int,
) -> tuple[list[float], list[float], list[float], dict[str, Any]]:
    BERTScorer = _import("bert_score", "bert-score").BERTScorer
    utils = _import("bert_score.utils", "bert-score")
    lang2model, model2layers = utils.lang2model, utils.model2layers

    model = model or lang2model[lang]
    if num_layers is None:
        if model not in model2layers:
            raise ValueError(
                f"bert_score has no default layer for BERTScore model {model!r}; pass bertscore_num_layers "
                "(CLI: --bertscore-num-layers), e.g. the model's num_hidden_layers"
            )
        num_layers = model2layers[model]
    try:
        scorer = BERTScorer(model_type=model, num_layers=num_layers, lang=lang, device=device, batch_size=batch_size)
    except Exception as e:  # from_pretrained raises OSError, ValueError, ... depending on what is wrong
        why = str(e).strip().rstrip(".")
        raise ExternalToolError(
            f"could not load BERTScore model {model!r}: {why}. Pass a model name from the Hugging Face hub "
            "(needs network or a filled cache) or a local directory with the model and its tokenizer "
            "(bertscore_model / --bertscore-model)"
        ) from e
    # A tokenizer saved without model_max_length reports a huge sentinel, and bert_score passes it to the fast
    # tokenizer's truncation, which overflows; cap it at what the position embeddings allow.
    tok = scorer._tokenizer
    if getattr(tok, "model_max_length", 0) > 100_000:
        tok.model_max_length = min(getattr(scorer._model.config, "max_position_embeddings", 512), 512)

    info = {"bertscore_model": model, "bertscore_num_layers": num_layers, "bertscore_hash": scorer.hash}
    n = len(cands)
    P, R, F = [0.0] * n, [0.0] * n, [0.0] * n
    # bert_score sets an empty candidate's P and R to 0 (F becomes 0); it cannot encode one under
    # transformers 5 (build_inputs_with_special_tokens is gone), so empty ones are not sent.
    todo = [i for i, c in enumerate(cands) if c.strip()]
    if todo:
        p, r, f = scorer.score([cands[i] for i in todo], [refs[i] for i in todo])
        for i, pi, ri, fi in zip(todo, p.tolist(), r.tolist(), f.tolist()):
            P[i], R[i], F[i] = pi, ri, fi
    return P, R, F, info
