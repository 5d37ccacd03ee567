"""Running the frozen part of a backbone once per image and augmented view, with an on-disk cache.

Because the backbone is frozen, its output for a given (image, view) never changes: we compute it once, keyed by
the file's sha256, the weights, the preprocessing and the view (and for augmented views the augmentation's
settings), and the head then trains on cached features in milliseconds.
View 0 is the evaluation preprocessing; views 1..K are augmentations seeded by (file hash, view).

The frozen part runs in ONNX Runtime (several times faster than eager torch on a CPU): it is exported once per
architecture and weights (keyed by a hash of its tensors, so seeded random weights are cached too) into
``artifacts/cache/frozen/`` and checked against torch. Each loader worker decodes an image once for all its views,
augments with torch and runs its own batches through the frozen part; ``training/fit.py`` keeps what needs gradients.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgcls.images import ImageError, decode_image
from imgcls.onnx_model import providers_for, session_options
from imgcls.registry import sha256_file
from training.data import Sample
from training.models import TransferModel
from training.presets import ClassificationPresetEval, ClassificationPresetTrain

log = logging.getLogger(__name__)


@dataclass
class Features:
    x: np.ndarray  # (n, ...) float32
    y: np.ndarray  # (n,) int64
    paths: list[Path]


class _Images(torch.utils.data.Dataset):
    """Item i: one image, decoded once, as each of the views of it that are still to compute."""

    def __init__(self, items: list[tuple[int, Path, str, tuple[int, ...]]], eval_preset: ClassificationPresetEval,
                 train_preset: ClassificationPresetTrain) -> None:
        self.items = items
        self.eval = eval_preset
        self.train = train_preset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        index, path, digest, views = self.items[i]
        try:
            img = decode_image(path, draft_size=self.eval.preprocess.resize_size)
        except (ImageError, OSError) as e:
            return index, views, None, f"{type(e).__name__}: {e}"
        crops = []
        for view in views:
            if view == 0:
                crops.append(self.eval(img))
            else:
                torch.manual_seed(int(digest[:15], 16) + view)  # the same augmentation every time this view is made
                crops.append(self.train(img))
        return index, views, crops, None


class _RunFrozen:
    """The loader's ``collate_fn``: runs a batch's crops through the frozen part where the batch was made, in a
    loader worker, with an ONNX Runtime session of ``threads`` threads on ``device`` (opened on first use in each
    process, then kept); with no ``onnx_path`` it gives the stacked crops.

    Each worker decoding, augmenting and running its own batches keeps every core busy; one session on every core
    beside decoding workers waited on its slowest thread whenever a worker took a core (1.4x-1.9x the time here)."""

    _sessions: dict[tuple[str, str], object] = {}  # per process: forked workers start with none

    def __init__(self, onnx_path: Path | None, threads: int | None, device: str = "cpu") -> None:
        self.onnx_path, self.threads, self.device = (str(onnx_path) if onnx_path else None), threads, device

    def run(self, x: np.ndarray) -> np.ndarray:
        """The frozen part's output for a batch of crops."""
        key = (self.onnx_path, self.device)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _session(Path(self.onnx_path), self.threads, self.device)
        return session.run(None, {"input": x})[0]

    def __call__(self, batch) -> tuple[list[tuple[int, int]], np.ndarray | None, dict[int, str]]:
        keys = [(index, view) for index, views, crops, _ in batch if crops is not None for view in views]
        errors = {index: err for index, _, crops, err in batch if crops is None}
        if not keys:
            return keys, None, errors
        x = np.stack([c for _, _, crops, _ in batch if crops is not None for c in crops])
        # no onnx_path: run on a GPU by the caller, or nothing is frozen (the scratch CNN trains end to end)
        return keys, (self.run(x) if self.onnx_path else x), errors


class _Frozen(nn.Module):
    """The frozen part: the body's feature map (when the last block trains) or the pooled last feature map."""

    def __init__(self, model: TransferModel, cut: str) -> None:
        super().__init__()
        self.body, self.last, self.pool, self.cut = model.body, model.last, model.pool, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.cut == "body" else self.pool(self.last(out))


def frozen_onnx(model: TransferModel, cut: str, folder: Path, opset: int = 18) -> Path:
    """The frozen part of ``model`` as an ONNX file in ``folder``, exported (and checked against torch) only when
    no file for the same architecture, weights, cut and input size is there yet."""
    frozen = _Frozen(model, cut).eval()
    h = hashlib.sha256(f"{cut}|{model.preprocess.input_size}|{opset}|{torch.__version__}|v1".encode())
    for name, t in frozen.state_dict().items():  # names, shapes and values: architecture and weights
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    path = folder / f"{type(model.body).__name__}-{h.hexdigest()[:20]}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    s = model.preprocess.input_size
    check = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    tmp = folder / f".{path.stem}.{os.getpid()}.tmp.onnx"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            torch.onnx.export(frozen, (check,), str(tmp), input_names=["input"], output_names=["features"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              opset_version=opset, dynamo=True, external_data=False, optimize=True)
        with torch.inference_mode():
            expected = frozen(check).numpy()
        got = _session(tmp).run(None, {"input": check.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= 1e-3 * max(1.0, float(np.abs(expected).max())):
            raise RuntimeError(f"the frozen part's ONNX export differs from torch by {diff:.2e}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported the frozen part to %s (ONNX Runtime matches torch within %.1e)", path, diff)
    return path


def _session(path: Path, threads: int | None = None, device: str = "auto"):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers_for(device))


class FeatureExtractor:
    """Computes (and caches under ``cache_dir``) the frozen part's output for images and views.

    ``frozen_dir`` holds the frozen part's ONNX export (default: a temporary folder, exported again each run)."""

    def __init__(self, model: TransferModel, cache_dir: Path | None, batch_size: int = 32,
                 frozen_dir: Path | None = None) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        cut = "body" if model.unfreeze_last_block else "pooled"
        pre = model.preprocess
        key = f"{model.weights_id}|{cut}|{pre.input_size}|{pre.resize_size}|{pre.mean}|{pre.std}|v3"
        self.cache = (cache_dir / hashlib.sha256(key.encode()).hexdigest()[:16]) if cache_dir else None
        self.cut = cut
        self.frozen_dir = frozen_dir
        self._frozen_file: Path | None = None  # the frozen part's ONNX export, made on first use
        self._tmp: tempfile.TemporaryDirectory | None = None  # holds it when no frozen_dir is given
        self.eval_preset = ClassificationPresetEval(pre)
        self.train_preset = ClassificationPresetTrain(pre)
        # Augmented views are named by the augmentation's settings too: changing them never reuses stale features.
        self.augmentation_key = hashlib.sha256(self.train_preset.settings.encode()).hexdigest()[:12]

    def _frozen_path(self) -> Path | None:
        """The frozen part's ONNX file (exported on first use), or None when nothing is frozen."""
        if self.cut == "body" and isinstance(self.model.body, nn.Identity):
            return None
        if self._frozen_file is None:
            if self.frozen_dir is None:
                self._tmp = tempfile.TemporaryDirectory()
            self._frozen_file = frozen_onnx(self.model, self.cut, self.frozen_dir or Path(self._tmp.name))
        return self._frozen_file

    def _cache_path(self, digest: str, view: int) -> Path:
        folder = f"view{view}-{self.augmentation_key}" if view else "view0"
        return self.cache / folder / digest[:2] / f"{digest}.npy"

    def extract(self, samples: list[Sample], view: int = 0, desc: str = "features") -> Features:
        """Features for ``samples`` at ``view``; unreadable files are skipped with a count and a warning."""
        return self.extract_views(samples, (view,), desc)[0]

    def extract_views(self, samples: list[Sample], views: Sequence[int], desc: str = "features") -> list[Features]:
        """Features for ``samples`` at each of ``views`` (one :class:`Features` per view, in order). Each image is
        decoded once for all its views that are not cached; unreadable files are skipped with a warning."""
        views = tuple(views)
        digests = [sha256_file(p) for p, _ in samples]
        out: dict[int, list[np.ndarray | None]] = {v: [None] * len(samples) for v in views}
        todo = []
        for i, ((path, _), digest) in enumerate(zip(samples, digests)):
            missing = []
            for view in views:
                cached = self._cache_path(digest, view) if self.cache else None
                if cached is not None and cached.is_file():
                    out[view][i] = np.load(cached)
                else:
                    missing.append(view)
            if missing:
                todo.append((i, path, digest, tuple(missing)))
        errors: dict[Path, str] = {}
        if todo:
            cpus = os.cpu_count() or 1
            workers = min(4, cpus) if cpus > 1 else 0
            frozen = self._frozen_path()
            # On a GPU one session in this process runs every batch (CUDA cannot start in forked workers).
            on_gpu = frozen is not None and providers_for("auto") != ["CPUExecutionProvider"]
            gpu = _RunFrozen(frozen, None, "auto") if on_gpu else None
            run = _RunFrozen(None if on_gpu else frozen, threads=max(1, cpus // max(1, workers)))
            loader = DataLoader(_Images(todo, self.eval_preset, self.train_preset),
                                batch_size=max(1, self.batch_size // len(views)), collate_fn=run, num_workers=workers)
            with tqdm(total=len(todo), desc=f"{desc} (views {', '.join(map(str, views))})", unit="img",
                      leave=False) as bar:
                for keys, feats, errs in loader:
                    if gpu is not None and feats is not None:
                        feats = gpu.run(feats)
                    errors.update({samples[i][0]: err for i, err in errs.items()})
                    for (i, view), f in zip(keys, feats if feats is not None else []):
                        out[view][i] = f
                        if self.cache:
                            self._save(self._cache_path(digests[i], view), f)
                    bar.update(len(errs) + len({i for i, _ in keys}))
        if errors:
            reasons = Counter(e.split(":")[0] for e in errors.values())
            first = next(iter(errors.items()))
            log.warning("skipped %d unreadable image(s) %s, e.g. %s: %s", len(errors), dict(reasons), *first)
        return [self._features(samples, out[view]) for view in views]

    @staticmethod
    def _save(path: Path, f: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, f)
        os.replace(tmp, path)

    @staticmethod
    def _features(samples: list[Sample], feats: list[np.ndarray | None]) -> Features:
        keep = [i for i, f in enumerate(feats) if f is not None]
        return Features(np.stack([feats[i] for i in keep]).astype(np.float32) if keep else np.zeros((0,), np.float32),
                        np.asarray([samples[i][1] for i in keep], np.int64), [samples[i][0] for i in keep])
