"""The licensed photos beside the project are found in their own split folders."""
from __future__ import annotations

from collections import Counter

from tests.conftest import DATA, needs_data
from training.data import create_dataset


@needs_data
def test_shared_data_is_found_with_its_own_splits() -> None:
    ds = create_dataset(DATA)
    assert ds.classes == ["cat", "dog"]
    assert ds.counts() == {"train": {"cat": 1396, "dog": 1396}, "val": {"cat": 299, "dog": 299},
                           "test": {"cat": 300, "dog": 300}}
    assert Counter(l for _, l in ds.splits["test"]) == {0: 300, 1: 300}
