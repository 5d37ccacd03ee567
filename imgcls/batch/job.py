"""The batch job: classify every input not yet in the results file, and summarise the file."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from imgcls.batch.engines import Options, import_ray, run_local, run_ray
from imgcls.batch.inputs import BatchError, find_inputs
from imgcls.batch.results import Outcome, ResultsFile
from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import verify

__all__ = ["run_job", "summarize"]
log = logging.getLogger(__name__)  # the command (cli/batch.py) shows these notes on stderr


def run_job(inputs: str, output: Path, model_dir: Path, engine: str = "local", opts: Options | None = None) -> dict:
    """Classify every input not yet in ``output``; returns the summary (also of rows from earlier runs)."""
    opts = opts or Options()
    paths = find_inputs(inputs)
    if not paths:
        raise BatchError(f"--input {inputs!r} names no image files")
    if engine == "ray":
        import_ray()  # fail before loading anything
        model, version = None, verify(model_dir).version  # the actors load their own sessions
    else:
        model = OnnxClassifier(model_dir, device=opts.device, threads=opts.threads, variant=opts.variant,
                               tensorrt_cache=opts.tensorrt_cache)
        version = model.version
    with ResultsFile(output) as out:
        _check_same_model(out, version)
        wanted = set(paths)
        todo = [p for p in paths if p not in out.done]
        skipped = len(paths) - len(todo)
        if out.dropped_bytes:
            log.warning("dropped a torn last line (%d bytes) from %s", out.dropped_bytes, output)
        if skipped:
            log.warning("%d of %d inputs are already in %s; classifying the other %d", skipped, len(paths), output,
                        len(todo))
        start = time.perf_counter()
        if todo and model is None:
            run_ray(todo, model_dir, out, opts)
        elif todo:
            run_local(todo, model, out, opts)
        elapsed = time.perf_counter() - start
        rows = [out.done[p] for p in paths if p in out.done]
        extra = len([p for p in out.done if p not in wanted])
    return summarize(rows, new=len(todo), skipped=skipped, elapsed=elapsed, other_rows=extra)


def _check_same_model(out: ResultsFile, version: str) -> None:
    others = out.versions - {version}
    if others:
        raise BatchError(f"{out.path} already holds results of model {', '.join(sorted(others))}, and this "
                         f"run would use {version}; write to another --output (or pass --model with that version)")


def summarize(rows: list[Outcome], *, new: int, skipped: int, elapsed: float, other_rows: int = 0) -> dict:
    """Counts by label and by error reason over ``rows``, with this run's figures."""
    labels = Counter(r.label for r in rows if not r.error)
    errors = Counter(r.error for r in rows if r.error)
    return {"inputs": len(rows), "classified_now": new, "already_done": skipped, "labels": dict(sorted(labels.items())),
            "errors": dict(sorted(errors.items())), "seconds": round(elapsed, 3),
            "images_per_second": round(new / elapsed, 2) if elapsed > 0 and new else None,
            "rows_for_other_inputs": other_rows}
