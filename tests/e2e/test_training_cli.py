"""The training CLI end to end, on real photos read in place: train, export parity, evaluate, registry commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from imgcls.registry import Registry
from tests.conftest import DATA, needs_data, run_cli

pytestmark = needs_data


def test_trained_model_is_registered_with_metadata_report_and_metrics(trained: Path) -> None:
    reg = Registry(trained)
    meta = reg.metadata("current")
    assert meta["labels"] == ["cat", "dog"] and meta["backbone"] == "efficientnet_lite0" and meta["pretrained"]
    assert meta["preprocessing"]["input_size"] == 224 and meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert len(meta["data"]["manifest_sha256"]) == 64
    assert meta["export"]["max_abs_diff_probabilities"] <= 1e-4
    test = meta["metrics"]["test"]
    assert test["n"] == 300 and test["accuracy"] >= 0.95 and test["log_loss"] < 0.2 and test["roc_auc"] > 0.98
    assert sum(map(sum, test["confusion_matrix"])) == 300
    assert len(test["misclassified"]) == round(300 * (1 - test["accuracy"]))
    report = reg.resolve("current") / "report"
    for name in ("report.md", "learning_curves.png", "confusion_matrix.png", "first_layer_filters.png",
                 "feature_maps.png", "class_activation_maps.png"):
        assert (report / name).stat().st_size > 0, name
    assert len(meta["history"]) >= 3 and {"train_loss", "val_loss", "val_accuracy"} <= set(meta["history"][0])


def test_onnx_has_a_dynamic_batch_axis_and_feature_map_output(trained: Path) -> None:
    session = ort.InferenceSession(str(Registry(trained).resolve("current") / "model.onnx"))
    probs, fmap = session.run(None, {"input": np.zeros((3, 3, 224, 224), np.float32)})
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert fmap.shape == (3, 1280, 7, 7)


def test_evaluate_cli_reproduces_the_recorded_test_metrics(trained: Path) -> None:
    out = run_cli("evaluate", "--model", "current", "--data", str(DATA), "--limit-per-class", "150", "--json",
                  artifacts=trained)
    result = json.loads(out.stdout)
    recorded = Registry(trained).metadata("current")["metrics"]["test"]
    assert result["n"] == recorded["n"] and result["accuracy"] == pytest.approx(recorded["accuracy"])
    assert result["log_loss"] == pytest.approx(recorded["log_loss"], abs=1e-6)


def test_list_show_promote_and_export(trained: Path, tmp_path: Path) -> None:
    version = Registry(trained).current()
    listing = run_cli("list", artifacts=trained).stdout
    assert f"* {version}" in listing
    shown = json.loads(run_cli("show", version, artifacts=trained).stdout)
    assert shown["version"] == version and "misclassified" not in shown["metrics"]["test"]
    exported = json.loads(run_cli("export", "--model", version, "--output", str(tmp_path / "again.onnx"),
                                  "--data", str(DATA), artifacts=trained).stdout)
    assert exported["max_abs_diff_probabilities"] <= 1e-4 and (tmp_path / "again.onnx").stat().st_size > 1e6
    bad = run_cli("promote", "no-such-version", artifacts=trained, check=False)
    assert bad.returncode == 2 and "unknown model 'no-such-version'" in bad.stderr
    assert Registry(trained).current() == version


def test_a_second_train_is_not_promoted_unless_asked(trained: Path) -> None:
    reg = Registry(trained)
    before, current = set(reg.versions()), reg.current()
    out = run_cli("train", "--data", str(DATA), "--limit-per-class", "20", "--epochs", "3", "--aug-views", "0",
                  artifacts=trained)
    (new,) = set(reg.versions()) - before
    assert reg.current() == current and new in out.stdout and "promoted" not in out.stdout


def test_official_resnet_weights_unavailable_offline_say_how_to_provide_them(tmp_path: Path) -> None:
    out = run_cli("train", "--data", str(DATA), "--backbone", "resnet18", "--limit-per-class", "2",
                  artifacts=tmp_path, check=False, TORCH_HOME=str(tmp_path / "torch"))
    assert out.returncode == 2
    assert "--weights FILE" in out.stderr and "hub/checkpoints/resnet18-f37072fd.pth" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "vgg16"])
def test_torchvision_backbones_random_init_and_local_weights_end_to_end(backbone: str, tmp_path: Path) -> None:
    import torch
    import torchvision

    weights = tmp_path / f"{backbone}.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(backbone, weights=None).state_dict(), weights)
    common = ["--data", str(DATA), "--backbone", backbone, "--limit-per-class", "4", "--epochs", "2",
              "--aug-views", "0"]
    run_cli("train", *common, "--random-init", artifacts=tmp_path / "a")
    run_cli("train", *common, "--weights", str(weights), artifacts=tmp_path / "b")
    for reg in (Registry(tmp_path / "a"), Registry(tmp_path / "b")):
        meta = reg.metadata("current")
        assert meta["backbone"] == backbone and meta["export"]["max_abs_diff_probabilities"] <= 1e-4
        assert meta["metrics"]["test"]["n"] == 8
    assert Registry(tmp_path / "b").metadata("current")["pretrained"]
    assert not Registry(tmp_path / "a").metadata("current")["pretrained"]
    wrong = run_cli("train", *common, "--weights", str(tmp_path / "b" / "current"), artifacts=tmp_path / "c",
                    check=False)
    assert wrong.returncode == 2 and "cannot read weights file" in wrong.stderr


def test_unreadable_files_are_skipped_with_a_count_not_a_crash(tmp_path: Path) -> None:
    """A small split-folder dataset of real photos (linked in place) plus a text file and a truncated JPEG."""
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for label in ("cat", "dog"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for photo in sorted((DATA / split / label).glob("*.jpg"))[:n]:
                (folder / photo.name).symlink_to(photo)
    (tmp_path / "data" / "test" / "cat" / "notes.jpg").write_text("not an image")
    photo = next((DATA / "test" / "dog").glob("*.jpg")).read_bytes()
    (tmp_path / "data" / "train" / "dog" / "half.jpg").write_bytes(photo[: len(photo) // 3])
    out = run_cli("train", "--data", str(tmp_path / "data"), "--epochs", "2", "--aug-views", "1",
                  artifacts=tmp_path / "reg")
    assert "skipped 1 unreadable image" in out.stderr
    meta = Registry(tmp_path / "reg").metadata("current")
    assert meta["metrics"]["test"]["n"] == 6
    assert list(meta["metrics"]["test"]["skipped"]) == [str(tmp_path / "data" / "test" / "cat" / "notes.jpg")]
    assert meta["metrics"]["test"]["skipped"][str(tmp_path / "data" / "test" / "cat" / "notes.jpg")].startswith(
        "not_an_image")
