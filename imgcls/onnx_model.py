"""A registry model version running in ONNX Runtime: CUDA where present and asked for, else CPU. No torch.

A version may hold variants of its network (``model.int8.onnx``, ``model.fp16.onnx``; see ``training/variants.py``);
``variant="auto"`` picks fp16 on CUDA, int8 on a CPU with int8 dot-product instructions (VNNI or AMX), else fp32.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.cpus import usable_cpus
from imgcls.metadata import ModelCard
from imgcls.novelty import NoveltyDetector, embed, is_known
from imgcls.preprocess import Preprocess
from imgcls.registry import HEAD_FILE, VARIANT_FILES, ModelError, verify

__all__ = ["INT8_CPU_FLAGS", "VARIANTS", "Classified", "DeviceError", "OnnxClassifier", "available_variants",
           "choose_providers", "choose_variant", "cpu_has_int8_dot", "gpu_visible", "providers_for", "session_options",
           "tensorrt_precision"]

log = logging.getLogger(__name__)
VARIANTS = tuple(VARIANT_FILES)  # fp32, int8, fp16
# /proc/cpuinfo flags of the instructions that make int8 convolutions faster than fp32 ones.
INT8_CPU_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class DeviceError(RuntimeError):
    """The device asked for cannot be used (e.g. DEVICE=cuda where CUDA cannot start)."""


def providers_for(device: str, tensorrt_cache: Path | None = None) -> list:
    """ONNX Runtime providers for ``device`` in {auto, cuda, cpu}. ``auto`` means CUDA when a GPU is visible.

    ``device="cuda"`` with an onnxruntime that has no CUDA provider raises :class:`DeviceError`. With
    ``tensorrt_cache`` (a folder) TensorRT goes first, caching its engines there, when this onnxruntime has it."""
    import onnxruntime as ort

    providers = choose_providers(device, ort.get_available_providers(), gpu_visible(), tensorrt_cache)
    if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
        try:  # onnxruntime-gpu[cuda,cudnn]: load the pip-installed CUDA libraries
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - a missing DLL shows up as a session without CUDA
            log.warning("onnxruntime.preload_dlls() failed: %s", e)
    return providers


def choose_providers(device: str, available: list[str], gpu: bool, tensorrt_cache: Path | None = None) -> list:
    """The provider list for ``device`` given the providers compiled in (``available``) and whether a GPU is seen."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda:
        raise DeviceError("DEVICE=cuda, but this onnxruntime has no CUDA provider (it is the CPU build: install "
                          "onnxruntime-gpu instead, as `make setup` does where nvidia-smi finds a GPU)")
    if device == "cpu" or not cuda or (device == "auto" and not gpu):
        if device == "auto":
            log.info("DEVICE=auto: using the CPU (%s)", "no GPU visible" if cuda else "a CPU build of onnxruntime")
        return ["CPUExecutionProvider"]
    providers: list = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if tensorrt_cache is not None:
        if "TensorrtExecutionProvider" in available:
            # TensorRT builds fp16 kernels only with trt_fp16_enable: it is set from the variant chosen later
            # (tensorrt_precision), so the fp16 variant runs in fp16 there too
            providers.insert(0, ("TensorrtExecutionProvider", {
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tensorrt_cache)}))
        else:
            log.warning("ORT_TENSORRT=1, but this onnxruntime has no TensorRT provider; using CUDA without it")
    return providers


def tensorrt_precision(providers: list, fp16: bool) -> list:
    """``providers`` with TensorRT's ``trt_fp16_enable`` set to ``fp16`` (the list as it is without TensorRT)."""
    return [(p[0], {**p[1], "trt_fp16_enable": fp16}) if isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider"
            else p for p in providers]


def gpu_visible() -> bool:
    """An NVIDIA device node exists and ``CUDA_VISIBLE_DEVICES`` does not hide it."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def session_options(threads: int | None = None):
    """ONNX Runtime session options of every session the project opens (``threads``: intra-op, default one per
    usable CPU).

    Always a number: left to itself, ONNX Runtime starts a thread per core of the machine and pins them there, past
    ``taskset`` and a container's CPU quota (found in issue 23: one of them ran on a CPU the process was not given)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cpus()
    opts.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of busy-waiting: on a few cores they would otherwise take CPU from
    # the threads that decode the next images (bench/bench_batch.py measured 4-20% more throughput).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def cpu_has_int8_dot(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU has VNNI or AMX int8 instructions (read from /proc/cpuinfo; False where it cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(INT8_CPU_FLAGS.intersection(flags))


def available_variants(model_dir: Path, card: ModelCard) -> list[str]:
    """The variants ``model_dir`` holds: fp32 always; others when their file exists and, for a registered version,
    its sha256 is recorded (so an unchecked file is never loaded)."""
    files = card.files
    return [v for v, name in VARIANT_FILES.items()
            if v == "fp32" or ((model_dir / name).is_file() and (files is None or name in files))]


def choose_variant(requested: str, available: list[str], on_cuda: bool, int8_cpu: bool) -> str:
    """``requested`` (auto, fp32, int8, fp16) resolved against what a version holds and where it runs."""
    if requested == "auto":
        if on_cuda:
            return "fp16" if "fp16" in available else "fp32"
        return "int8" if int8_cpu and "int8" in available else "fp32"
    if requested not in VARIANTS:
        raise ValueError(f"variant must be auto, {', '.join(VARIANTS)}, not {requested!r}")
    if requested not in available:
        raise ModelError(f"this model has no {requested} variant (it holds {', '.join(available)})")
    return requested


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
                 card: ModelCard | None = None, variant: str = "auto",
                 tensorrt_cache: Path | None = None) -> None:
        """``card`` is for a version still being built (not yet checksummed); otherwise it is read and verified.
        ``variant``: auto, fp32, int8 or fp16 (see :func:`choose_variant`); ``.variant`` says which one runs.
        ``tensorrt_cache``: a folder asks for TensorRT on CUDA, its engines cached there (created if missing)."""
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.card: ModelCard = card if card is not None else verify(self.model_dir)
        self.version: str = self.card.version
        self.labels: list[str] = list(self.card.labels)
        if self.card.preprocessing is None:
            raise ModelError(f"model {self.version} records no preprocessing")
        self.preprocess: Preprocess = self.card.preprocessing
        opts = session_options(threads)
        if tensorrt_cache is not None:
            tensorrt_cache.mkdir(parents=True, exist_ok=True)
        providers = providers_for(device, tensorrt_cache)
        available = available_variants(self.model_dir, self.card)
        wants_cuda = "CUDAExecutionProvider" in providers
        self.variant: str = choose_variant(variant, available, wants_cuda, cpu_has_int8_dot())
        providers = tensorrt_precision(providers, self.variant == "fp16")
        self.session = ort.InferenceSession(str(self.model_dir / VARIANT_FILES[self.variant]), sess_options=opts,
                                            providers=providers)
        self.providers: list[str] = self.session.get_providers()  # what the session really uses
        if wants_cuda and "CUDAExecutionProvider" not in self.providers:
            # onnxruntime-gpu falls back to the CPU silently when CUDA cannot start (driver, libraries, no GPU).
            if device == "cuda":
                raise DeviceError("DEVICE=cuda, but ONNX Runtime's CUDA provider could not start (see its log "
                                  "above: missing libcudart/libcudnn, no driver or no GPU); providers in use: "
                                  f"{self.providers}")
            log.warning("DEVICE=auto: the CUDA provider could not start (see ONNX Runtime's log); using the CPU")
            cpu_variant = choose_variant(variant, available, False, cpu_has_int8_dot())
            if cpu_variant != self.variant:
                self.variant = cpu_variant
                self.session = ort.InferenceSession(str(self.model_dir / VARIANT_FILES[self.variant]),
                                                    sess_options=opts, providers=["CPUExecutionProvider"])
                self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_features = "features" in outputs
        head = self.model_dir / HEAD_FILE
        self.head = dict(np.load(head)) if head.is_file() else None
        novelty = self.card.novelty
        self.detector = NoveltyDetector.load(self.model_dir, novelty) if novelty and self.has_features else None

    @property
    def device(self) -> str:
        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
        return "cuda" if gpu.intersection(self.providers) else "cpu"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, classes), for a preprocessed batch (N, 3, S, S)."""
        return self._run(["probabilities"], batch)[0]

    def _run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        """``outputs`` for ``batch``, through I/O binding: on a GPU the batch is copied to the device once and the
        outputs stay there until only the ones asked for are copied back. The same path on the CPU, where it costs
        what ``session.run`` costs, so that the tests here run the code a GPU runs."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch, np.float32))
        for name in outputs:
            binding.bind_output(name, self.device)  # "cuda" or "cpu": ONNX Runtime's device names
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the last convolutional feature map (N, K, h, w)."""
        if not self.has_features:
            raise ValueError(f"model {self.version} exports no feature map")
        probs, fmap = self._run(["probabilities", "features"], batch)
        return probs, fmap

    def classify(self, batch: np.ndarray) -> Classified:
        """Probabilities with each image's ``novelty`` and ``known`` (see :class:`Classified`)."""
        if self.detector is None:
            return Classified(self.predict(batch), None, None)
        probs, fmap = self.predict_with_features(batch)
        novelty = self.detector.novelty(embed(fmap))
        return Classified(probs, novelty, is_known(novelty))

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        s = self.preprocess.input_size
        for n in batch_sizes:
            self.predict(np.zeros((n, 3, s, s), np.float32))
