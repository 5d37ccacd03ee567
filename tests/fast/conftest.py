"""The fast tier runs without the licensed photos: it must not find them even where they are beside the project."""
from __future__ import annotations

import pytest

import training.data


@pytest.fixture(autouse=True, scope="session")
def _no_shared_data(tmp_path_factory) -> None:
    mp = pytest.MonkeyPatch()
    mp.delenv("DATA_DIR", raising=False)
    mp.setattr(training.data, "SHARED_DATA", tmp_path_factory.mktemp("no-shared-data") / "absent")
    yield
    mp.undo()
