"""Finding labelled images: split folders, class folders, Kaggle's flat ``cat.123.jpg`` files or Oxford-IIIT Pet.

Class names come from the data (any number of classes). Where the data has no split, files are split
deterministically and stratified by the hash of their file name, so a file keeps its split as the data grows.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.images import IMAGE_SUFFIXES
from imgcls.registry import PROJECT_ROOT, sha256_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "catsdogs"


class DataError(ValueError):
    """The data folder is missing or in no layout we know."""


Sample = tuple[Path, int]


@dataclass
class Dataset:
    """Labelled image files per split; ``classes[i]`` names label ``i``."""

    root: str
    layout: str
    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)

    def select(self, split: str) -> list[Sample]:
        """The samples of one split, or of every split for ``all`` (each file once)."""
        if split == "all":
            return [s for name in SPLITS for s in self.splits.get(name, [])]
        return list(self.splits.get(split, []))

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {self.classes[k]: n for k, n in sorted(Counter(l for _, l in items).items())}
                for s, items in self.splits.items()}

    def manifest_hash(self) -> str:
        """sha256 over every (split, class, file name, file sha256): names the exact data a model saw."""
        h = hashlib.sha256()
        for split in sorted(self.splits):
            for path, label in sorted(self.splits[split], key=lambda s: (s[1], s[0].name, str(s[0]))):
                h.update(f"{split}\t{self.classes[label]}\t{path.name}\t{sha256_file(path)}\n".encode())
        return h.hexdigest()


def default_data_dir() -> Path:
    """``$DATA_DIR``, else ``../shared/data/catsdogs`` beside the project when it exists."""
    env = os.environ.get("DATA_DIR")
    if env:
        return Path(env)
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    raise DataError(
        "no data given: pass --data DIR (or set DATA_DIR) pointing at DIR/{train,val,test}/<class>/*, DIR/<class>/* "
        "or a folder of Kaggle-style 'cat.123.jpg' files; 'oxford-pet:DIR' downloads Oxford-IIIT Pet into DIR"
    )


def create_dataset(spec: str | Path, *, download: bool = True) -> Dataset:
    """Discover a dataset. ``spec`` is a folder, or ``oxford-pet:ROOT`` for torchvision's Oxford-IIIT Pet."""
    spec = str(spec)
    if spec.startswith("oxford-pet:"):
        return _oxford_pet(Path(spec.split(":", 1)[1]), download)
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if any((root / s).is_dir() for s in SPLITS):
        return _split_folders(root)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        files = {d.name: _image_files(d) for d in class_dirs}
        return _hash_split(str(root), "class-folders", files, _non_images(root, recursive=True))
    flat: dict[str, list[Path]] = {}
    for p in _image_files(root):
        if "." in p.stem:
            flat.setdefault(p.name.split(".", 1)[0].lower(), []).append(p)
    if not flat:
        raise DataError(
            f"{root} holds no images in a known layout: DIR/{{train,val,test}}/<class>/*, DIR/<class>/* "
            "or Kaggle-style '<class>.<id>.jpg' files"
        )
    return _hash_split(str(root), "kaggle-flat", flat, _non_images(root, recursive=False))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _non_images(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES
                  and not p.name.startswith(".") and p.suffix.lower() not in {".csv", ".md", ".txt", ".json"})


def _split_folders(root: Path) -> Dataset:
    present = [s for s in SPLITS if (root / s).is_dir()]
    classes = sorted({d.name for s in present for d in (root / s).iterdir() if d.is_dir()})
    if not classes:
        raise DataError(f"{root}'s {'/'.join(present)} folders hold no class folders")
    index = {c: i for i, c in enumerate(classes)}
    splits = {s: [(p, index[d.name]) for d in sorted((root / s).iterdir()) if d.is_dir() for p in _image_files(d)]
              for s in present}
    ds = Dataset(str(root), "split-folders", classes, splits, _non_images(root, recursive=True))
    for missing in (s for s in SPLITS if s not in present):
        if "train" in present:  # carve a missing val or test split out of train
            ds.splits["train"], ds.splits[missing] = _carve(ds.splits["train"], 0.15)
        else:  # e.g. a folder holding only test/: evaluation data
            ds.splits[missing] = []
    _warn_ignored(ds)
    return ds


def split_key(path: Path) -> str:
    return hashlib.sha256(f"split-v1:{path.name}".encode()).hexdigest()


def _carve(items: list[Sample], frac: float) -> tuple[list[Sample], list[Sample]]:
    keep, carved = [], []
    for label in sorted({l for _, l in items}):
        group = sorted((s for s in items if s[1] == label), key=lambda s: split_key(s[0]))
        n = round(len(group) * frac)
        carved += group[:n]
        keep += group[n:]
    return keep, carved


def _hash_split(root: str, layout: str, files: dict[str, list[Path]], ignored: list[Path]) -> Dataset:
    """Within each class, sort by ``sha256('split-v1:' + file name)``: first 70% train, next 15% val, rest test."""
    classes = sorted(c for c, f in files.items() if f)
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for label, c in enumerate(classes):
        group = sorted(files[c], key=split_key)
        n_train, n_val = round(len(group) * 0.70), round(len(group) * 0.15)
        splits["train"] += [(p, label) for p in group[:n_train]]
        splits["val"] += [(p, label) for p in group[n_train:n_train + n_val]]
        splits["test"] += [(p, label) for p in group[n_train + n_val:]]
    ds = Dataset(root, layout, classes, splits, ignored)
    _warn_ignored(ds)
    return ds


def _warn_ignored(ds: Dataset) -> None:
    if ds.ignored:
        log.warning("ignored %d files that are not images by name, e.g. %s", len(ds.ignored), ds.ignored[0])


def _oxford_pet(root: Path, download: bool) -> Dataset:
    """Oxford-IIIT Pet's cat/dog labels (``binary-category``) via torchvision; its trainval split gives train+val."""
    from torchvision.datasets import OxfordIIITPet

    try:
        trainval = OxfordIIITPet(root, split="trainval", target_types="binary-category", download=download)
        test = OxfordIIITPet(root, split="test", target_types="binary-category", download=download)
    except Exception as e:  # noqa: BLE001 - no network, or a partial download
        raise DataError(f"Oxford-IIIT Pet is not available under {root}: {e}") from e
    classes = [c.lower() for c in trainval.bin_classes]
    train, val = _carve(list(zip(trainval._images, trainval._bin_labels)), 0.15)
    return Dataset(f"oxford-pet:{root}", "oxford-iiit-pet", classes,
                   {"train": train, "val": val, "test": list(zip(test._images, test._bin_labels))})
