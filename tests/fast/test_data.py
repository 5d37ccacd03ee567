"""Data discovery: the three folder layouts, Oxford-IIIT Pet's layout, deterministic stratified splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import DataError, create_dataset


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), i % 255, np.uint8)).save(folder / name)


def test_split_folders_with_n_classes(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for c in ("bird", "cat", "dog"):
            write_images(tmp_path / split / c, [f"{c}{i}.png" for i in range(3)])
    ds = create_dataset(tmp_path)
    assert ds.layout == "split-folders" and ds.classes == ["bird", "cat", "dog"]
    assert ds.counts()["val"] == {"bird": 3, "cat": 3, "dog": 3}


def test_missing_val_split_is_carved_from_train(tmp_path: Path) -> None:
    for c in ("a", "b"):
        write_images(tmp_path / "train" / c, [f"{c}{i}.png" for i in range(20)])
        write_images(tmp_path / "test" / c, [f"{c}t.png"])
    ds = create_dataset(tmp_path)
    assert ds.counts()["val"] == {"a": 3, "b": 3} and ds.counts()["train"] == {"a": 17, "b": 17}
    assert not {p for p, _ in ds.splits["val"]} & {p for p, _ in ds.splits["train"]}


def test_class_folders_are_split_stratified_and_deterministically(tmp_path: Path) -> None:
    write_images(tmp_path / "cat", [f"c{i}.png" for i in range(40)])
    write_images(tmp_path / "dog", [f"d{i}.png" for i in range(20)])
    (tmp_path / "notes.bin").write_bytes(b"x")
    ds = create_dataset(tmp_path)
    assert ds.layout == "class-folders"
    assert ds.counts() == {"train": {"cat": 28, "dog": 14}, "val": {"cat": 6, "dog": 3},
                           "test": {"cat": 6, "dog": 3}}
    assert ds.ignored == [tmp_path / "notes.bin"]
    again = create_dataset(tmp_path)
    assert again.splits == ds.splits and again.manifest_hash() == ds.manifest_hash()
    # A file keeps its split when the data grows: splits depend on the file's own name only.
    write_images(tmp_path / "cat", [f"new{i}.png" for i in range(10)])
    grown = create_dataset(tmp_path)
    moved = {p for p, _ in ds.splits["test"]} - {p for p, _ in grown.splits["test"]}
    assert len(moved) <= 2  # only boundary files can shift when the class grows by 25%


def test_kaggle_flat_layout(tmp_path: Path) -> None:
    write_images(tmp_path, [f"cat.{i}.jpg" for i in range(10)] + [f"dog.{i}.jpg" for i in range(10)])
    ds = create_dataset(tmp_path)
    assert ds.layout == "kaggle-flat" and ds.classes == ["cat", "dog"]
    assert sum(len(v) for v in ds.splits.values()) == 20
    assert all(p.name.startswith(ds.classes[l]) for items in ds.splits.values() for p, l in items)


def test_manifest_hash_changes_with_content(tmp_path: Path) -> None:
    write_images(tmp_path / "a", ["1.png", "2.png"])
    write_images(tmp_path / "b", ["3.png"])
    before = create_dataset(tmp_path).manifest_hash()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a" / "1.png")
    assert create_dataset(tmp_path).manifest_hash() != before


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_unusable_folders_say_what_is_expected(tmp_path: Path, setup: str) -> None:
    target = tmp_path / "nope" if setup == "missing" else tmp_path
    with pytest.raises(DataError, match="does not exist|no images in a known layout"):
        create_dataset(target)


def test_oxford_pet_parsing_from_a_fake_root(tmp_path: Path) -> None:
    """torchvision's OxfordIIITPet on a tiny root in its layout; no download happens."""
    base = tmp_path / "oxford-iiit-pet"
    names = {"trainval": [("Abyssinian_1", 1, 1), ("Abyssinian_2", 1, 1), ("beagle_1", 2, 2), ("beagle_2", 2, 2)]
             + [(f"Bengal_{i}", 6, 1) for i in range(10)] + [(f"boxer_{i}", 4, 2) for i in range(10)],
             "test": [("Abyssinian_9", 1, 1), ("beagle_9", 2, 2)]}
    (base / "annotations").mkdir(parents=True)
    for split, rows in names.items():
        (base / "annotations" / f"{split}.txt").write_text("".join(f"{n} {c} {s} 1\n" for n, c, s in rows))
        write_images(base / "images", [f"{n}.jpg" for n, _, _ in rows])
    ds = create_dataset(f"oxford-pet:{tmp_path}", download=False)
    assert ds.classes == ["cat", "dog"]
    assert ds.counts()["test"] == {"cat": 1, "dog": 1}
    assert sum(ds.counts()["train"].values()) + sum(ds.counts()["val"].values()) == 24
    assert all(("beagle" in p.name or "boxer" in p.name) == (l == 1) for p, l in ds.splits["train"])


def test_oxford_pet_without_data_or_network_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Oxford-IIIT Pet is not available"):
        create_dataset(f"oxford-pet:{tmp_path}", download=False)


def test_a_folder_with_only_a_test_split_is_evaluation_data(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        write_images(tmp_path / "test" / c, [f"{c}{i}.png" for i in range(4)])
    ds = create_dataset(tmp_path)
    assert ds.layout == "split-folders" and ds.classes == ["cat", "dog"]
    assert ds.counts() == {"test": {"cat": 4, "dog": 4}, "train": {}, "val": {}}
    assert len(ds.select("all")) == len(ds.select("test")) == 8 and ds.select("train") == []


def test_select_all_holds_every_file_once_in_every_layout(tmp_path: Path) -> None:
    write_images(tmp_path / "classes" / "a", [f"a{i}.png" for i in range(10)])
    write_images(tmp_path / "classes" / "b", [f"b{i}.png" for i in range(10)])
    write_images(tmp_path / "flat", [f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(10)])
    for c in ("a", "b"):
        write_images(tmp_path / "splits" / "train" / c, [f"{c}{i}.png" for i in range(10)])
    for folder in ("classes", "flat", "splits"):
        ds = create_dataset(tmp_path / folder)
        everything = ds.select("all")
        assert len(everything) == len({p for p, _ in everything}) == 20, folder
        assert sum(len(ds.select(s)) for s in ("train", "val", "test")) == 20, folder


def test_image_suffixes_are_one_list_shared_with_batch_jobs(tmp_path: Path) -> None:
    from imgcls.batch import find_inputs

    for name in ("a.jpg", "b.JPEG", "c.jfif", "d.webp", "e.tiff", "notes.txt", "f.jpe"):
        (tmp_path / "x").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "x" / name, "PNG")
    data = {p.name for p, _ in create_dataset(tmp_path).select("all")}
    batch = {Path(p).name for p in find_inputs(str(tmp_path))}
    assert data == batch == {"a.jpg", "b.JPEG", "c.jfif", "d.webp", "e.tiff", "f.jpe"}
