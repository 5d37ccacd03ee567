"""Retraining end to end through the CLI, on real photos read in place (symlinked, never copied into the repo).

A base model trained on 10 photos per class (3 epochs, no augmentation) is the model to beat. New data is 60
further photos per class: correctly labelled, the candidate (same settings, 7x the data) should beat the base on
the original test split and be promoted; with cats and dogs swapped, it must lose the comparison and be rejected.
Seen over runs (the head's initialisation is not seeded): base 0.54-0.90 test accuracy, candidate 0.92-0.96,
swapped 0.1-0.32. A run killed after registering its candidate must leave ``current`` as it was. Feedback goes
through a real server's POST /feedback.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from imgcls.registry import Registry
from tests.conftest import DATA, PY, ROOT, child_env, needs_data, run_cli, serve

CLASSES = ("cat", "dog")
N_TRAIN, N_VAL, N_TEST, N_NEW, BASE_EPOCHS = 10, 10, 100, 60, 3
SHIFTED = DATA.parent / "shifted" / "imagenet"  # cats and dogs from another source, only measured


def _link(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def _photos(split: str, label: str) -> list[Path]:
    return sorted((DATA / split / label).iterdir())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Symlinked data folders and a registry whose current model is the small base (trained by the real CLI)."""
    root = tmp_path_factory.mktemp("retrain")
    for c, other in zip(CLASSES, reversed(CLASSES)):
        _link(_photos("train", c)[:N_TRAIN], root / "orig" / "train" / c)
        _link(_photos("val", c)[:N_VAL], root / "orig" / "val" / c)
        _link(_photos("test", c)[:N_TEST], root / "orig" / "test" / c)
        fresh = _photos("train", c)[N_TRAIN:N_TRAIN + N_NEW]  # photos the base never saw
        _link(fresh, root / "new" / c)
        _link(fresh, root / "swapped" / other)  # the same photos under the wrong label
    run_cli("train", "--data", str(root / "orig"), "--aug-views", "0", "--epochs", str(BASE_EPOCHS),
            artifacts=root / "base")
    return {"root": root, "orig": root / "orig", "new": root / "new", "swapped": root / "swapped",
            "base": root / "base"}


def registry_copy(world: dict[str, Path], name: str) -> Path:
    """A fresh copy of the base registry; the feature cache is shared (content-addressed, written atomically)."""
    art = world["root"] / name
    shutil.copytree(world["base"], art, ignore=shutil.ignore_patterns("cache"), symlinks=True)
    (art / "cache").symlink_to(world["base"] / "cache", target_is_directory=True)
    return art


def retrain_report(art: Path) -> dict:
    (folder,) = (art / "retrain").iterdir()
    assert (folder / "report.md").is_file()
    return json.loads((folder / "report.json").read_text())


@needs_data
@pytest.mark.slow
def test_more_data_and_feedback_beat_the_base_and_get_promoted(world, tmp_path: Path, monkeypatch) -> None:
    import httpx

    monkeypatch.delenv("FEEDBACK_DIR", raising=False)  # the service's and retrain's defaults must meet
    art = registry_copy(world, "promoted")
    reg = Registry(art)
    base = reg.current()
    feedback = [(c, p) for c in CLASSES for p in _photos("train", c)[200:202]]
    leaked = ("cat", world["orig"] / "test" / "cat" / _photos("test", "cat")[0].name)  # an evaluation photo
    with serve(art, tmp_path / "server.log", FEEDBACK_TOKEN="retrain-test") as url:
        for label, path in [*feedback, leaked]:
            r = httpx.post(f"{url}/feedback", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                           data={"label": label}, headers={"Authorization": "Bearer retrain-test"}, timeout=60)
            assert r.status_code == 201, r.text

    out = run_cli("retrain", "--data", str(world["new"]), artifacts=art).stdout
    report = retrain_report(art)
    candidate = report["candidate"]["version"]
    b, c = report["base"]["metrics"], report["candidate"]["metrics"]
    print(f"base {b['accuracy']:.4f}/{b['log_loss']:.4f}, candidate {c['accuracy']:.4f}/{c['log_loss']:.4f}")
    assert reg.current() == candidate != base and report["status"] == "promoted"
    assert report["decision"]["promote"] and "accuracy" in report["decision"]["reason"]
    assert c["accuracy"] >= b["accuracy"] and b["n"] == c["n"] == report["evaluation"]["n_files"] == 2 * N_TEST
    assert candidate in out and "promoted" in out
    # Feedback round trip: 4 photos used, the evaluation photo kept out of training.
    fb = report["data"]["feedback"]
    assert (fb["found"], fb["used"], fb["dropped"]["in_eval_split"]) == (5, 4, 1)
    assert fb["dir"] == str(art / "feedback")
    meta = reg.metadata(candidate)
    counts = meta["data"]["counts"]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 2 * (N_TRAIN + N_VAL + N_NEW) + 4
    assert counts["test"] == {"cat": N_TEST, "dog": N_TEST} and meta["data"]["root"] == str(world["orig"])
    # The base's settings carried over; lineage recorded.
    assert meta["training"]["parent"] == base
    assert meta["training"]["fit"]["epochs"] == BASE_EPOCHS and meta["training"]["aug_views"] == 0
    last = json.loads((art / "promotions.jsonl").read_text().splitlines()[-1])
    assert (last["version"], last["previous"]) == (candidate, base)
    assert "Promoted" in (Path(report["report_dir"]) / "report.md").read_text()
    assert not list((reg.resolve(candidate)).glob("retrain*"))  # nothing written into the immutable version


@needs_data
@pytest.mark.slow
def test_candidate_trained_on_mislabelled_data_is_rejected(world) -> None:
    art = registry_copy(world, "rejected")
    reg = Registry(art)
    base = reg.current()
    history = (art / "promotions.jsonl").read_bytes()
    # Photos from another source are scored for both models too (the gate's rule: tests/fast/test_retrain_rules.py).
    shifted = ["--shifted", str(SHIFTED)] if SHIFTED.is_dir() else []
    out = run_cli("retrain", "--data", str(world["swapped"]), "--feedback", str(art / "no-feedback"), *shifted,
                  artifacts=art).stdout
    report = retrain_report(art)
    if shifted:
        assert report["shifted"] == {"dirs": [str(SHIFTED)], "max_neither_rise": 0.01}
        for model in ("base", "candidate"):
            (scored,) = report[model]["shifted"]
            assert scored["n"] == 61 and 0 <= scored["answered_neither"] <= 1 and scored["data"] == str(SHIFTED)
        assert "from other sources" in (Path(report["report_dir"]) / "report.md").read_text()
    b, c = report["base"]["metrics"], report["candidate"]["metrics"]
    print(f"base {b['accuracy']:.4f}/{b['log_loss']:.4f}, candidate {c['accuracy']:.4f}/{c['log_loss']:.4f}")
    assert c["accuracy"] < b["accuracy"]
    assert report["status"] == "rejected" and not report["decision"]["promote"]
    assert report["decision"]["reason"].startswith("candidate accuracy") and "not promoted" in out
    assert reg.current() == base and (art / "promotions.jsonl").read_bytes() == history
    assert report["candidate"]["version"] in reg.versions()  # kept for inspection, just not current
    assert report["data"]["feedback"]["found"] == 0


@needs_data
@pytest.mark.slow
def test_killed_retrain_leaves_current_untouched(world) -> None:
    art = registry_copy(world, "killed")
    reg = Registry(art)
    pointer, history = (art / "current").read_bytes(), (art / "promotions.jsonl").read_bytes()
    versions = reg.versions()
    proc = subprocess.Popen([PY, "-m", "training", "--artifacts", str(art), "retrain", "--data", str(world["new"])],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_env(), start_new_session=True)
    watchdog = threading.Timer(600, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    killed, seen = False, []
    try:
        for line in proc.stdout:
            seen.append(line)
            # The candidate is registered and about to be scored: the moment before promotion.
            if "evaluating candidate" in line:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        proc.wait(60)
    finally:
        watchdog.cancel()
    assert killed, "".join(seen)[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert (art / "current").read_bytes() == pointer and (art / "promotions.jsonl").read_bytes() == history
    (candidate,) = set(reg.versions()) - set(versions)  # it got as far as registering the candidate
    assert reg.current() != candidate
    assert retrain_report(art)["status"] == "running"


@needs_data
def test_new_data_with_unknown_classes_is_refused(world) -> None:
    art = registry_copy(world, "unknown-class")
    new = world["root"] / "birds"
    _link(_photos("train", "cat")[300:303], new / "cat")
    _link(_photos("train", "dog")[300:303], new / "bird")
    proc = run_cli("retrain", "--data", str(new), artifacts=art, check=False)
    assert proc.returncode == 2
    assert "['bird']" in proc.stderr and "base model" in proc.stderr
    assert Registry(art).versions() == Registry(world["base"]).versions() and not (art / "retrain").exists()
