"""Batch inference: classify a folder tree, a glob or a CSV list of images into a JSONL (or CSV) results file.

    imgcls batch      --input DIR|GLOB|LIST.csv --output results.jsonl [--model current|VERSION]
                            [--engine local|ray] [--artifacts DIR] [--batch-size 32]

Same decoding, preprocessing and ONNX model as the HTTP service (``imgcls``), no torch. One row per input image:
``path`` (absolute), ``label``, ``score``, ``probabilities`` (label -> probability), ``model_version``, and for a
file that cannot be classified ``error`` (a stable reason code such as ``not_an_image`` or ``corrupt``) and
``detail``. Bad files never stop the job.

Crash safety: see :mod:`imgcls.batch.results`. The modules: ``inputs`` (what to classify), ``rows`` (one result
each), ``results`` (the file), ``engines`` (local or Ray), ``job`` (all of it); the command is ``cli/batch.py``.

``--engine ray`` runs the same decode + ONNX step in a Ray Data actor pool (``pip install .[ray]``); the driver
writes the rows with the same crash-safe writer. It joins the cluster named by ``RAY_ADDRESS`` if set, otherwise it
starts a local Ray on this machine's cores. Every node must see the input paths (a shared file system).
"""
from __future__ import annotations

from imgcls.batch.engines import Options, RayPredictor, import_ray, run_local, run_ray
from imgcls.batch.inputs import BatchError, find_inputs, read_path_list
from imgcls.batch.job import run_job, summarize
from imgcls.batch.results import Outcome, ResultsFile, drop_torn_tail
from imgcls.batch.rows import FIELDS, batch_rows, error_row, prediction_row

__all__ = ["FIELDS", "BatchError", "Options", "Outcome", "RayPredictor", "ResultsFile", "batch_rows",
           "drop_torn_tail", "error_row", "find_inputs", "import_ray", "prediction_row", "read_path_list",
           "run_job", "run_local", "run_ray", "summarize"]
