"""The one command line (``imgcls``, also ``python -m cli``) on the tiny model: evaluation of any folder layout
(``--split all``), clear one-line errors, the registry commands. In process, except where the process matters."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from cli.main import main
from imgcls.registry import Registry
from tests import synthetic
from tests.conftest import ROOT, TINY_CLASSES, child_env
from tests.live_server import free_port


def imgcls(capsys, *args: str) -> tuple[int, str, str]:
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_line(err: str) -> str:
    """The one ``error: ...`` line a usage or data error prints (progress bars and warnings may come before it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def evaluate(capsys, registry: Path, data: Path, split: str) -> dict:
    rc, out, err = imgcls(capsys, "evaluate", "--artifacts", str(registry), "--data", str(data), "--split", split,
                          "--device", "cpu", "--json")
    assert rc == 0, err
    return json.loads(out)


def class_folders(root: Path, n: int) -> Path:
    for label in TINY_CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(n):
            (root / label / f"{i}.jpg").write_bytes(synthetic.image_bytes(label, 70_000 + i))
    return root


def test_the_command_is_declared_and_lists_its_commands(capsys) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["imgcls"] == "cli.main:main"
    rc, out, _ = imgcls(capsys, "--help")
    assert rc == 0
    for command in ("train", "evaluate", "list", "show", "promote", "export", "retrain", "batch", "serve"):
        assert command in out
    rc, _, err = imgcls(capsys, "bogus")
    assert rc == 2 and "unknown command 'bogus'" in err


def test_evaluate_split_all_scores_every_image_of_class_folders(capsys, tiny_registry, tmp_path) -> None:
    data = class_folders(tmp_path / "data", 7)
    everything = evaluate(capsys, tiny_registry, data, "all")
    assert everything["n"] == 7 * len(TINY_CLASSES) and everything["split"] == "all"
    assert everything["accuracy"] >= 0.9
    parts = [evaluate(capsys, tiny_registry, data, split)["n"] for split in ("train", "val", "test")]
    assert sum(parts) == everything["n"] and all(parts)  # the hash split's three parts, each file once


def test_a_folder_holding_only_test_is_evaluation_data(capsys, tiny_registry, tiny_data, tmp_path) -> None:
    data = tmp_path / "only-test"
    shutil.copytree(tiny_data / "test", data / "test")
    result = evaluate(capsys, tiny_registry, data, "test")
    recorded = Registry(tiny_registry).metadata()["metrics"]["test"]
    assert result["n"] == recorded["n"] and result["accuracy"] == pytest.approx(recorded["accuracy"])
    assert result["log_loss"] == pytest.approx(recorded["log_loss"], abs=1e-6)  # same files, same numbers
    assert evaluate(capsys, tiny_registry, data, "all")["n"] == result["n"]
    rc, out, err = imgcls(capsys, "evaluate", "--artifacts", str(tiny_registry), "--data", str(data),
                          "--split", "train")
    assert rc == 2 and out == ""
    assert "the train split of" in error_line(err) and "is empty" in error_line(err)
    rc, _, err = imgcls(capsys, "train", "--artifacts", str(tmp_path / "reg"), "--data", str(data),
                        "--backbone", "tiny")
    assert rc == 2 and "the train split" in error_line(err)


def test_evaluate_with_nothing_readable_is_a_one_line_error(capsys, tiny_registry, tmp_path) -> None:
    for label in TINY_CLASSES:
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "x.jpg").write_text("not an image")
    rc, _, err = imgcls(capsys, "evaluate", "--artifacts", str(tiny_registry), "--data", str(tmp_path / "data"),
                        "--split", "all", "--device", "cpu")
    assert rc == 2 and "none of the 3 images could be read" in error_line(err)


def test_missing_data_is_a_clear_error(capsys, tmp_path) -> None:
    rc, _, err = imgcls(capsys, "train", "--artifacts", str(tmp_path), "--data", str(tmp_path / "nowhere"))
    assert rc == 2 and "does not exist" in error_line(err)


def test_list_show_and_promote(capsys, tiny_copy) -> None:
    version = Registry(tiny_copy).current()
    rc, out, _ = imgcls(capsys, "list", "--artifacts", str(tiny_copy))
    assert rc == 0 and f"* {version}" in out and "tiny" in out
    rc, out, _ = imgcls(capsys, "show", version, "--artifacts", str(tiny_copy))
    shown = json.loads(out)
    assert shown["version"] == version and "history" not in shown and "misclassified" not in shown["metrics"]["test"]
    rc, out, _ = imgcls(capsys, "show", "--full", "--artifacts", str(tiny_copy))
    full = json.loads(out)
    assert full["history"] and "misclassified" in full["metrics"]["test"]
    rc, _, err = imgcls(capsys, "promote", "no-such-version", "--artifacts", str(tiny_copy))
    assert rc == 2 and "unknown model 'no-such-version'" in err
    rc, out, _ = imgcls(capsys, "promote", version, "--reason", "test", "--artifacts", str(tiny_copy))
    assert rc == 0 and f"-> {version}" in out
    log = [json.loads(line) for line in (tiny_copy / "promotions.jsonl").read_text().splitlines()]
    assert log[-1]["reason"] == "test" and log[-1]["version"] == version


def test_serve_hands_over_with_bentoml_usage_tracking_off(tmp_path: Path) -> None:
    """``imgcls serve`` becomes ``bentoml serve`` (the same process); BentoML's usage reports are off in it unless
    the user set ``BENTOML_DO_NOT_TRACK`` (Makefile and Bento set it too)."""
    env = {k: v for k, v in child_env(ARTIFACTS_DIR=str(tmp_path)).items() if k != "BENTOML_DO_NOT_TRACK"}
    for given, expected in ((None, "true"), ("false", "false")):
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(free_port())], cwd=ROOT,
                                env=env if given is None else {**env, "BENTOML_DO_NOT_TRACK": given},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while b"bentoml" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # not yet exec'd
                assert time.monotonic() < deadline and proc.poll() is None, "imgcls serve never became bentoml"
                time.sleep(0.05)
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
                           if b"=" in item)
        finally:
            proc.kill()
            proc.wait(10)
        assert environ.get(b"BENTOML_DO_NOT_TRACK") == expected.encode()


def test_python_m_forms_and_serve_hands_over_to_bentoml() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                          text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--port" in proc.stdout and "--host" in proc.stdout and "BENTO" in proc.stdout  # bentoml serve's help
