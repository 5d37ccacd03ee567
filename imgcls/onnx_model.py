"""A registry model version running in ONNX Runtime: CUDA where present and asked for, else CPU. No torch."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.novelty import NoveltyDetector, embed
from imgcls.preprocess import Preprocess
from imgcls.registry import HEAD_FILE, ONNX_FILE, verify

log = logging.getLogger(__name__)


def providers_for(device: str) -> list[str]:
    """ONNX Runtime providers for ``device`` in {auto, cuda, cpu}. ``auto`` means CUDA when a GPU is visible."""
    import onnxruntime as ort

    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    compiled_in = "CUDAExecutionProvider" in ort.get_available_providers()
    want_cuda = device == "cuda" or (device == "auto" and compiled_in and gpu_visible())
    if want_cuda and compiled_in:
        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu[cuda,cudnn]: load the pip-installed CUDA libraries
            try:
                ort.preload_dlls()
            except Exception as e:  # noqa: BLE001 - a missing DLL shows up as a CPU-only session below
                log.warning("onnxruntime.preload_dlls() failed: %s", e)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if want_cuda:
        log.warning("device=cuda asked for, but this onnxruntime has no CUDA provider; using CPU")
    return ["CPUExecutionProvider"]


def gpu_visible() -> bool:
    """An NVIDIA device node exists and ``CUDA_VISIBLE_DEVICES`` does not hide it."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


@dataclass
class Classified:
    """A batch's answers: ``novelty`` > 1 (``known`` false) means unlike the training data; both are None for a
    model version fitted before the open-set detector existed."""

    probabilities: np.ndarray  # (N, classes), calibrated
    novelty: np.ndarray | None  # (N,) float
    known: np.ndarray | None  # (N,) bool


class OnnxClassifier:
    """Loads ``model_dir`` (verifying its sha256s) and classifies preprocessed NCHW float32 batches."""

    def __init__(self, model_dir: Path | str, *, device: str = "auto", threads: int | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        """``metadata`` is for a version still being built (not yet checksummed); otherwise it is verified."""
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.metadata: dict[str, Any] = metadata if metadata is not None else verify(self.model_dir)
        self.version: str = self.metadata["version"]
        self.labels: list[str] = list(self.metadata["labels"])
        self.preprocess = Preprocess.from_dict(self.metadata["preprocessing"])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of busy-waiting: on a few cores they would otherwise take CPU from
        # the threads that decode the next images (bench/bench_batch.py measured 4-20% more throughput).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.model_dir / ONNX_FILE), sess_options=opts, providers=providers_for(device)
        )
        self.providers: list[str] = self.session.get_providers()  # what the session really uses
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_features = "features" in outputs
        head = self.model_dir / HEAD_FILE
        self.head = dict(np.load(head)) if head.is_file() else None
        novelty = self.metadata.get("novelty")
        self.detector = NoveltyDetector.load(self.model_dir, novelty) if novelty and self.has_features else None

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, classes), for a preprocessed batch (N, 3, S, S)."""
        return self.session.run(["probabilities"], {self.input_name: batch})[0]

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the last convolutional feature map (N, K, h, w)."""
        if not self.has_features:
            raise ValueError(f"model {self.version} exports no feature map")
        probs, fmap = self.session.run(["probabilities", "features"], {self.input_name: batch})
        return probs, fmap

    def classify(self, batch: np.ndarray) -> Classified:
        """Probabilities with each image's ``novelty`` and ``known`` (see :class:`Classified`)."""
        if self.detector is None:
            return Classified(self.predict(batch), None, None)
        probs, fmap = self.predict_with_features(batch)
        novelty = self.detector.novelty(embed(fmap))
        return Classified(probs, novelty, novelty <= 1.0)

    def class_activation_map(self, fmap: np.ndarray, class_index: int) -> np.ndarray:
        """CAM for one image's feature map (K, h, w): the head's class weights over channels, scaled to [0, 1]."""
        if self.head is None:
            raise ValueError(f"model {self.version} has no linear head over pooled features, so no CAM")
        cam = np.tensordot(self.head["weight"][class_index], fmap, axes=(0, 0))
        cam -= cam.min()
        peak = cam.max()
        return cam / peak if peak > 0 else cam

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        s = self.preprocess.input_size
        for n in batch_sizes:
            self.predict(np.zeros((n, 3, s, s), np.float32))
