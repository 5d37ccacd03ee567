"""Batch inference: classify a folder tree, a glob or a CSV list of images into a JSONL (or CSV) results file.

    python -m imgcls.batch --input DIR|GLOB|LIST.csv --output results.jsonl [--model current|VERSION]
                            [--engine local|ray] [--artifacts DIR] [--batch-size 32]

Same decoding, preprocessing and ONNX model as the HTTP service (``imgcls``), no torch. One row per input image:
``path`` (absolute), ``label``, ``score``, ``probabilities`` (label -> probability), ``model_version``, and for a
file that cannot be classified ``error`` (a stable reason code such as ``not_an_image`` or ``corrupt``) and
``detail``. Bad files never stop the job.

Crash safety: rows are appended, flushed and fsynced one batch at a time. On start the job drops a torn last line
(left by a kill in the middle of a write), reads the paths already in the output and skips them, so re-running the
same command after a crash or SIGKILL ends with exactly one row per input.

``--engine ray`` runs the same decode + ONNX step in a Ray Data actor pool (``pip install .[ray]``); the driver
writes the rows with the same crash-safe writer. It joins the cluster named by ``RAY_ADDRESS`` if set, otherwise it
starts a local Ray on this machine's cores. Every node must see the input paths (a shared file system).
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import glob
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from imgcls.images import IMAGE_SUFFIXES
from imgcls.loader import Failure, preprocessed_batches
from imgcls.novelty import is_known
from imgcls.onnx_model import VARIANTS, DeviceError, OnnxClassifier
from imgcls.registry import DEFAULT_ROOT, ModelError, Registry, verify

FIELDS = ("path", "label", "score", "known", "novelty", "probabilities", "model_version", "error", "detail")
GLOB_CHARS = frozenset("*?[")


class BatchError(RuntimeError):
    """A problem with the job's arguments or its output file: reported in one line, exit status 2."""


# -- inputs -------------------------------------------------------------------------------------------------------

def find_inputs(spec: str) -> list[str]:
    """Absolute paths named by ``spec``: a folder (searched recursively for image extensions), a ``.csv`` list,
    a glob (every file it matches, images or not) or a single file. Duplicates are dropped, order is kept."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = _walk_images(path)
    elif path.suffix.lower() == ".csv" and path.is_file():
        found = read_path_list(path)
    elif GLOB_CHARS & set(spec):
        found = sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
    elif path.is_file():
        found = [str(path)]
    else:
        raise BatchError(f"--input {spec!r} is not a folder, a .csv file, a file, nor a glob that matches anything")
    return list(dict.fromkeys(os.path.abspath(p) for p in found))


def _walk_images(root: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found.extend(os.path.join(folder, f) for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return found


def read_path_list(csv_path: Path) -> list[str]:
    """Paths from the ``path`` column of a CSV file (or its first column); relative ones resolve against the CSV's
    folder. Without a ``path`` column, a first row whose first cell has no file extension and names no file is
    taken as a header."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    if not rows:
        return []
    base = csv_path.parent
    header = [cell.strip().lower() for cell in rows[0]]
    column = 0
    if "path" in header:
        column, rows = header.index("path"), rows[1:]
    elif not Path(rows[0][0].strip()).suffix and not (base / rows[0][0].strip()).exists():
        rows = rows[1:]
    cells = (r[column].strip() for r in rows if len(r) > column)
    return [str(base / os.path.expanduser(c)) for c in cells if c]


# -- rows ---------------------------------------------------------------------------------------------------------

def batch_rows(model: OnnxClassifier, paths: list[str], ok: list[int], array: np.ndarray | None,
               failures: dict[int, Failure]) -> list[dict[str, Any]]:
    """One row per path of one batch, in order: ``array`` holds the decoded ones (``ok``, indices into ``paths``)."""
    rows: list[dict[str, Any]] = [{}] * len(paths)
    if array is not None:
        out = model.classify(array)
        novelty = out.novelty if out.novelty is not None else [None] * len(ok)
        for i, probs, nov in zip(ok, out.probabilities, novelty):
            rows[i] = prediction_row(paths[i], probs, model.labels, model.version, nov)
    for i, failure in failures.items():
        rows[i] = error_row(paths[i], failure, model.version)
    return rows


def prediction_row(path: str, probs: np.ndarray, labels: list[str], version: str,
                   novelty: float | None = None) -> dict[str, Any]:
    """``known`` is false (``novelty`` > 1) for an image unlike the model's training data; both are None for a
    model version without an open-set detector."""
    top = int(np.argmax(probs))
    return {"path": path, "label": labels[top], "score": float(probs[top]),
            "known": None if novelty is None else bool(is_known(novelty)),
            # 6 decimals: the score's last float digits depend on how images were batched (BLAS), not on the image
            "novelty": None if novelty is None else round(float(novelty), 6),
            "probabilities": {label: float(p) for label, p in zip(labels, probs)},
            "model_version": version, "error": None, "detail": None}


def error_row(path: str, failure: Failure, version: str) -> dict[str, Any]:
    # One physical line per row is what makes torn-line recovery exact, also for CSV output.
    detail = " ".join(failure.detail.split())
    return {"path": path, "label": None, "score": None, "known": None, "novelty": None, "probabilities": None,
            "model_version": version, "error": failure.reason, "detail": detail}


# -- the results file ---------------------------------------------------------------------------------------------

def drop_torn_tail(f: IO[bytes]) -> int:
    """Truncate a file opened for update to its last complete line (ending in a newline); returns bytes dropped.

    A job killed in the middle of a write leaves at most one partial line at the end; it is dropped and its inputs
    are classified again."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            pos = pos - step + newline + 1
            break
        pos -= step
    if pos < end:
        f.truncate(pos)
        f.flush()
        os.fsync(f.fileno())
    f.seek(0, os.SEEK_END)
    return end - pos


@dataclass(frozen=True)
class Outcome:
    """What the results file says about one input (kept small: a file may hold millions of rows)."""

    label: str | None
    error: str | None


class ResultsFile:
    """The append-only output (JSONL, or CSV when the name ends in ``.csv``), locked against a second writer."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        self.dropped_bytes = 0
        self.done: dict[str, Outcome] = {}  # what the file holds, by path
        self.versions: set[str] = set()  # model versions of the rows in the file
        self._f: IO[bytes] | None = None

    def __enter__(self) -> "ResultsFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise BatchError(f"{self.path} is being written by another batch job") from None
        self._f = f
        try:
            self.dropped_bytes = drop_torn_tail(f)
            for row in self._read_rows():
                self._note(row)
            if self.csv and f.tell() == 0:
                self._append(_csv_line(FIELDS))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()  # closing also releases the lock
            self._f = None

    def _read_rows(self) -> Iterator[dict[str, Any]]:
        assert self._f is not None
        self._f.seek(0)
        text = io.TextIOWrapper(self._f, encoding="utf-8", errors="surrogateescape", newline="")
        try:
            if self.csv:
                reader = csv.DictReader(text)
                if reader.fieldnames is not None and tuple(reader.fieldnames) != FIELDS:
                    raise BatchError(f"{self.path} has columns {reader.fieldnames}, not a results file of this job "
                                     f"({', '.join(FIELDS)}); choose another --output")
                for row in reader:
                    yield {k: (v if v != "" else None) for k, v in row.items()}
            else:
                for n, line in enumerate(text, 1):
                    try:
                        row = json.loads(line)
                    except ValueError:
                        row = None
                    if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                        raise BatchError(f"{self.path}:{n} is not a result row of this job; choose another --output")
                    yield row
        finally:
            text.detach()  # keep self._f open
            self._f.seek(0, os.SEEK_END)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` and make them durable (flush + fsync) before returning."""
        if rows:
            self._append("".join(_csv_line(_csv_values(r)) if self.csv else json.dumps(r) + "\n" for r in rows))
            for row in rows:
                self._note(row)

    def _note(self, row: dict[str, Any]) -> None:
        self.done[row["path"]] = Outcome(row.get("label"), row.get("error"))
        self.versions.add(str(row.get("model_version")))

    def _append(self, text: str) -> None:
        assert self._f is not None
        self._f.write(text.encode("utf-8", "surrogateescape"))  # file names that are not UTF-8 round-trip
        self._f.flush()
        os.fsync(self._f.fileno())


def _csv_values(row: dict[str, Any]) -> list[Any]:
    probs = row["probabilities"]
    return [row["path"], row["label"], row["score"], row.get("known"), row.get("novelty"),
            json.dumps(probs) if probs is not None else None, row["model_version"], row["error"], row["detail"]]


def _csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return out.getvalue()


# -- engines ------------------------------------------------------------------------------------------------------

@dataclass
class Options:
    batch_size: int = 32
    workers: int = 2  # decoding threads
    threads: int | None = None  # ONNX Runtime intra-op threads (None: one per core)
    prefetch: int = 2  # batches decoded ahead of inference
    # Decoding threads run at a lower priority than ONNX Runtime's, so they take the cycles ONNX Runtime leaves rather
    # than preempt its threads, which wait for each other at every operator. Measured on 2 cores: no change on an
    # idle machine, faster while other processes compete for the cores.
    decode_nice: int = 10
    device: str = "auto"
    variant: str = "auto"  # auto | fp32 | int8 | fp16 (imgcls.onnx_model.choose_variant)
    progress: bool = True
    actors: int | None = None  # ray: actor pool size (None: cluster CPUs // actor_cpus)
    actor_cpus: float = 1.0  # ray: CPUs reserved per actor
    tensorrt_cache: Path | None = None  # a folder: TensorRT first on CUDA, its engines cached there


def run_local(todo: list[str], model: OnnxClassifier, out: ResultsFile, opts: Options) -> None:
    """Classify ``todo`` in this process: threads decode ahead, the main thread runs ONNX and writes."""
    with tqdm(total=len(todo), unit="img", desc="classifying", disable=not opts.progress, smoothing=0.05) as bar:
        done = 0
        for ok, array, failures in preprocessed_batches(todo, model.preprocess, opts.batch_size, opts.workers,
                                                        opts.prefetch, opts.decode_nice):
            n = len(ok) + len(failures)
            out.write(batch_rows(model, todo[done:done + n], [i - done for i in ok], array,
                                 {i - done: f for i, f in failures.items()}))
            done += n
            bar.update(n)


class RayPredictor:
    """The Ray Data actor: loads the ONNX model once, decodes each batch in threads, returns rows as JSON text."""

    def __init__(self, model_dir: str, device: str, threads: int | None, workers: int, variant: str = "auto",
                 tensorrt_cache: Path | None = None) -> None:
        self.model = OnnxClassifier(model_dir, device=device, threads=threads, variant=variant,
                                    tensorrt_cache=tensorrt_cache)
        self.workers = workers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        ((ok, array, failures),) = preprocessed_batches(paths, self.model.preprocess, len(paths), self.workers, 0)
        rows = batch_rows(self.model, paths, ok, array, failures)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}


def run_ray(todo: list[str], model_dir: Path, out: ResultsFile, opts: Options) -> None:
    """Classify ``todo`` on Ray Data (an actor pool of :class:`RayPredictor`); the driver writes the rows."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level="WARNING")
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level="WARNING")
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # our own bar below counts rows written
        actors = opts.actors or max(1, int(ray.cluster_resources().get("CPU", 1) // opts.actor_cpus))
        threads = opts.threads or max(1, int(opts.actor_cpus))
        ds = ray.data.from_items([{"path": p} for p in todo]).map_batches(
            RayPredictor,
            fn_constructor_kwargs={"model_dir": str(model_dir), "device": opts.device, "threads": threads,
                                   "tensorrt_cache": opts.tensorrt_cache,
                                   "workers": opts.workers, "variant": opts.variant},
            batch_size=opts.batch_size, batch_format="numpy", num_cpus=opts.actor_cpus,
            num_gpus=1 if opts.device == "cuda" else 0,
            compute=ray.data.ActorPoolStrategy(size=actors),
        )
        with tqdm(total=len(todo), unit="img", desc="classifying (ray)", disable=not opts.progress) as bar:
            for batch in ds.iter_batches(batch_size=opts.batch_size, batch_format="numpy"):
                out.write([json.loads(text) for text in batch["row"]])
                bar.update(len(batch["row"]))
    finally:
        if started_here:
            ray.shutdown()


def import_ray():
    """Ray is an optional extra; a missing one is a one-line error telling how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the [data] extra lacks its dependencies
    except ImportError as e:
        raise BatchError(f"--engine ray needs Ray Data, which is not installed ({e}): pip install '.[ray]'") from e
    return ray


# -- the job ------------------------------------------------------------------------------------------------------

def run_job(inputs: str, output: Path, model_dir: Path, engine: str = "local", opts: Options | None = None) -> dict:
    """Classify every input not yet in ``output``; returns the summary (also of rows from earlier runs)."""
    opts = opts or Options()
    paths = find_inputs(inputs)
    if not paths:
        raise BatchError(f"--input {inputs!r} names no image files")
    if engine == "ray":
        import_ray()  # fail before loading anything
        model, version = None, verify(model_dir)["version"]  # the actors load their own sessions
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
            print(f"dropped a torn last line ({out.dropped_bytes} bytes) from {output}", file=sys.stderr)
        if skipped:
            print(f"{skipped} of {len(paths)} inputs are already in {output}; classifying the other {len(todo)}",
                  file=sys.stderr)
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


def format_summary(s: dict, output: Path) -> str:
    """The summary as printed at the end of a run."""
    lines = [f"{s['inputs']} inputs in {output}: {s['classified_now']} classified now, "
             f"{s['already_done']} already done"]
    if s["images_per_second"]:
        lines.append(f"  {s['seconds']:.1f} s, {s['images_per_second']:.1f} images/s")
    for label, n in s["labels"].items():
        lines.append(f"  {label:12} {n}")
    lines.append(f"  {'errors':12} {sum(s['errors'].values())}"
                 + (" (" + ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) + ")" if s["errors"] else ""))
    if s["rows_for_other_inputs"]:
        lines.append(f"  (the file also holds {s['rows_for_other_inputs']} rows for paths not in this --input)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None, prog: str = "python -m imgcls.batch") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="a folder (recursive), a glob (quote it) or a CSV list of paths")
    p.add_argument("--output", required=True, type=Path, help="results file: .jsonl, or .csv for CSV rows")
    p.add_argument("--model", default="current", help="current, a version, or a version folder")
    p.add_argument("--artifacts", type=Path, default=Path(os.environ.get("ARTIFACTS_DIR") or DEFAULT_ROOT),
                   help="registry folder (default: $ARTIFACTS_DIR, else ./artifacts)")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=Options.workers, help="decoding threads")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--prefetch", type=int, default=Options.prefetch, help="batches decoded ahead of inference")
    p.add_argument("--decode-nice", type=int, default=Options.decode_nice,
                   help="how much lower the decoding threads' scheduling priority is (0: the same)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--variant", choices=["auto", *VARIANTS], default="auto",
                   help="model variant: auto picks fp16 on CUDA, int8 on a CPU with VNNI/AMX, else fp32")
    p.add_argument("--actors", type=int, default=None, help="ray: actor pool size (default: CPUs / --actor-cpus)")
    p.add_argument("--actor-cpus", type=float, default=Options.actor_cpus, help="ray: CPUs reserved per actor")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.workers < 1 or args.prefetch < 0:
        p.error("--batch-size and --workers must be at least 1, --prefetch at least 0")
    return args


def main(argv: list[str] | None = None, prog: str = "python -m imgcls.batch") -> int:
    args = parse_args(argv, prog)
    opts = Options(batch_size=args.batch_size, workers=args.workers, threads=args.threads, prefetch=args.prefetch,
                   decode_nice=args.decode_nice, device=args.device, variant=args.variant,
                   progress=not args.no_progress,
                   actors=args.actors, actor_cpus=args.actor_cpus)
    try:
        if args.engine == "ray":
            import_ray()  # before anything slow
        model_dir = Registry(args.artifacts).resolve(args.model)
        summary = run_job(args.input, args.output, model_dir, args.engine, opts)
    except (BatchError, ModelError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the rows written so far are in {args.output}; run the same command to resume",
              file=sys.stderr)
        return 130
    print(format_summary(summary, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
