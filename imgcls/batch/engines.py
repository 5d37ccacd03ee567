"""Where the batch job runs: in this process (threads decode ahead of ONNX Runtime) or on a Ray Data actor pool."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imgcls.batch.inputs import BatchError
from imgcls.batch.results import ResultsFile
from imgcls.batch.rows import batch_rows
from imgcls.gpu_decode import BatchDecoder, GpuDecodeUnavailable, nvimgcodec_decoder
from imgcls.loader import Failure, preprocessed_batches
from imgcls.onnx_model import OnnxClassifier

__all__ = ["Options", "RayPredictor", "decoded_batches", "import_ray", "run_local", "run_ray"]
log = logging.getLogger(__name__)  # the command (cli/batch.py) shows these notes on stderr


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
    decode: str = "auto"  # auto | cpu | gpu: JPEGs on nvImageCodec (imgcls.gpu_decode); auto: gpu when on CUDA
    progress: bool = True
    actors: int | None = None  # ray: actor pool size (None: cluster CPUs // actor_cpus)
    actor_cpus: float = 1.0  # ray: CPUs reserved per actor
    tensorrt_cache: Path | None = None  # a folder: TensorRT first on CUDA, its engines cached there


def run_local(todo: list[str], model: OnnxClassifier, out: ResultsFile, opts: Options) -> None:
    """Classify ``todo`` in this process: threads decode ahead, the main thread runs ONNX and writes."""
    with tqdm(total=len(todo), unit="img", desc="classifying", disable=not opts.progress, smoothing=0.05) as bar:
        done = 0
        for ok, array, failures in decoded_batches(todo, model, opts):
            n = len(ok) + len(failures)
            out.write(batch_rows(model, todo[done:done + n], [i - done for i in ok], array,
                                 {i - done: f for i, f in failures.items()}))
            done += n
            bar.update(n)


def decoded_batches(todo: list[str], model: OnnxClassifier, opts: Options
                    ) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, Failure]]]:
    """``todo`` decoded and preprocessed in batches: JPEGs on the GPU when ``opts.decode`` asks for it (or is auto
    and the model runs on CUDA and nvImageCodec can start), else on the CPU."""
    decoder = None
    if opts.decode == "gpu" or (opts.decode == "auto" and model.device == "cuda"):
        try:
            decoder = BatchDecoder(model.preprocess, nvimgcodec_decoder("gpu"), workers=opts.workers)
        except GpuDecodeUnavailable as e:
            if opts.decode == "gpu":
                raise BatchError(f"--decode gpu: {e}") from e
            log.warning("decoding on the CPU: %s", e)
    if decoder is None:
        yield from preprocessed_batches(todo, model.preprocess, opts.batch_size, opts.workers, opts.prefetch,
                                        opts.decode_nice)
        return
    try:
        yield from decoder.batches(todo, opts.batch_size, opts.prefetch)
    finally:
        decoder.close()
        log.warning("decoded by nvImageCodec on the GPU: %s", decoder.stats)


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
