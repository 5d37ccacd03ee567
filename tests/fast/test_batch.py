"""The batch job (``imgcls.batch``) on the tiny model and synthetic images: inputs of every kind, error rows, the
same numbers as the service path, SIGKILL and resume, torn-line recovery, refusals. Mostly in process (``main``);
a child process where the test is about the process (a kill, what it imports)."""
from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli.batch import main
from imgcls.batch import drop_torn_tail
from imgcls.images import decode_image
from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import Registry
from tests import synthetic
from tests.conftest import PY, ROOT, TINY_CLASSES, child_env


@pytest.fixture(scope="module")
def pics(tmp_path_factory) -> dict[str, list[Path]]:
    """Eight JPEGs of each class that the tiny model never saw, in ``<class>/`` folders."""
    root = tmp_path_factory.mktemp("pics")
    out = {}
    for label in TINY_CLASSES:
        (root / label).mkdir()
        out[label] = []
        for i in range(8):
            path = root / label / f"{label}.{i}.jpg"
            path.write_bytes(synthetic.image_bytes(label, 50_000 + i))
            out[label].append(path)
    return out


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``main([...])`` in this process: (exit status, stdout, stderr)."""
    try:
        rc = main(["--no-progress", *args])
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_ok(capsys, *args: str) -> tuple[str, str]:
    rc, out, err = run(capsys, *args)
    assert rc == 0, f"exit {rc}\n{out}\n{err}"
    return out, err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def current_version(artifacts: Path) -> str:
    return Registry(artifacts).current()


def assert_prediction(row: dict, version: str) -> None:
    assert row["error"] is None and row["detail"] is None
    assert row["model_version"] == version
    probs = row["probabilities"]
    assert set(probs) == set(TINY_CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert row["label"] == max(probs, key=probs.get)
    assert row["score"] == probs[row["label"]]


def make_bad_files(folder: Path, jpeg: Path) -> tuple[Path, Path]:
    """A text file named .jpg and a real JPEG cut to 60% of its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes-not-a-photo.jpg"
    text.write_text("this is not an image\n")
    data = jpeg.read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    return text, truncated


def test_folder_input_recursive_with_error_rows(capsys, tiny_registry, pics, tmp_path):
    tree = tmp_path / "photos"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "red.jpg").write_bytes(pics["red"][0].read_bytes())
    (tree / "a" / "b" / "blue.JPG").write_bytes(pics["blue"][1].read_bytes())  # extensions match in any case
    (tree / "top-red.jpeg").write_bytes(pics["red"][2].read_bytes())
    (tree / "README.txt").write_text("not an image extension: not an input")
    text, truncated = make_bad_files(tree / "a" / "bad", pics["green"][0])
    out = tmp_path / "results.jsonl"

    stdout, _ = run_ok(capsys, "--input", str(tree), "--output", str(out), "--artifacts", str(tiny_registry))

    rows = {r["path"]: r for r in read_jsonl(out)}
    assert len(rows) == len(read_jsonl(out)) == 5
    version = current_version(tiny_registry)
    for name, label in [("a/red.jpg", "red"), ("a/b/blue.JPG", "blue"), ("top-red.jpeg", "red")]:
        row = rows[str(tree / name)]
        assert_prediction(row, version)
        assert row["label"] == label
    assert rows[str(text)]["error"] == "not_an_image"
    assert rows[str(truncated)]["error"] == "corrupt"
    for bad in (text, truncated):
        assert rows[str(bad)]["label"] is None and rows[str(bad)]["detail"]
        assert rows[str(bad)]["model_version"] == version
    assert "5 inputs" in stdout  # the summary: counts by label and errors
    assert "blue         1" in stdout and "red          2" in stdout
    assert "errors       2 (corrupt: 1, not_an_image: 1)" in stdout


def test_same_probabilities_as_the_service_path(capsys, tiny_registry, pics, tmp_path):
    """The job's numbers equal decode_image + Preprocess + OnnxClassifier, the code the service runs."""
    photos = [pics["red"][5], pics["green"][5], pics["blue"][6]]
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p}\n" for p in photos))
    out = tmp_path / "r.jsonl"
    run_ok(capsys, "--input", str(listing), "--output", str(out), "--artifacts", str(tiny_registry),
           "--batch-size", "2")

    model = OnnxClassifier(Registry(tiny_registry).resolve("current"), device="cpu")
    batch = np.stack([model.preprocess(decode_image(p, draft_size=model.preprocess.resize_size)) for p in photos])
    expected = model.predict(batch)
    rows = read_jsonl(out)
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    for row, probs in zip(rows, expected):
        assert [row["probabilities"][label] for label in model.labels] == pytest.approx(probs.tolist(), abs=1e-5)


def test_glob_input_to_csv_output(capsys, tiny_registry, pics, tmp_path):
    pattern = str(pics["red"][0].parent.parent / "*" / "*.[0-4].jpg")  # every class, five of eight each
    expected = sorted(os.path.abspath(p) for p in glob.glob(pattern))
    assert len(expected) == 5 * len(TINY_CLASSES)
    out = tmp_path / "results.csv"

    run_ok(capsys, "--input", pattern, "--output", str(out), "--artifacts", str(tiny_registry))

    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "score", "known", "novelty", "probabilities", "model_version",
                                     "error", "detail"]
        rows = list(reader)
    assert sorted(r["path"] for r in rows) == expected
    correct = 0
    for r in rows:
        probs = json.loads(r["probabilities"])
        assert r["label"] == max(probs, key=probs.get) and float(r["score"]) == probs[r["label"]]
        assert r["error"] == "" and r["model_version"] == current_version(tiny_registry)
        correct += r["label"] == Path(r["path"]).parent.name
    assert correct / len(rows) >= 0.9


def test_csv_list_path_column_relative_paths_and_missing_files(capsys, tiny_registry, pics, tmp_path):
    listdir = tmp_path / "lists"
    (listdir / "imgs").mkdir(parents=True)
    (listdir / "imgs" / "local-red.jpg").write_bytes(pics["red"][3].read_bytes())
    listing = listdir / "todo.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "note"])
        w.writerow(["1", "imgs/local-red.jpg", "relative to the CSV's folder"])
        w.writerow(["2", str(pics["blue"][3]), "absolute, read in place"])
        w.writerow(["3", "imgs/missing.jpg", "does not exist"])
        w.writerow(["4", str(pics["blue"][3]), "a duplicate: one row"])
    out = tmp_path / "out" / "results.jsonl"  # the output's folder is created

    run_ok(capsys, "--input", str(listing), "--output", str(out), "--artifacts", str(tiny_registry))

    rows = read_jsonl(out)
    assert [r["path"] for r in rows] == [str(listdir / "imgs" / "local-red.jpg"), str(pics["blue"][3]),
                                         str(listdir / "imgs" / "missing.jpg")]
    assert rows[0]["label"] == "red" and rows[1]["label"] == "blue"
    assert rows[2]["error"] == "not_found" and rows[2]["label"] is None


def test_csv_list_first_column_with_and_without_header(capsys, tiny_registry, pics, tmp_path):
    red, green = pics["red"][7], pics["green"][7]
    for i, header in enumerate(["file,comment\n", ""]):
        listing = tmp_path / f"list{i}.csv"
        listing.write_text(header + f"{red},x\n{green},y\n")
        out = tmp_path / f"r{i}.jsonl"
        run_ok(capsys, "--input", str(listing), "--output", str(out), "--artifacts", str(tiny_registry))
        assert [(r["path"], r["label"]) for r in read_jsonl(out)] == [(str(red), "red"), (str(green), "green")]


def test_sigkill_then_resume_gives_exactly_one_row_per_input(capsys, tiny_registry, pics, tmp_path):
    # 600 distinct paths (links to the 24 pictures): one fsynced row each, so the job takes long enough to be killed
    links = tmp_path / "links"
    links.mkdir()
    sources = [p for label in TINY_CLASSES for p in pics[label]]
    inputs = []
    for i in range(600):
        link = links / f"{i:04d}-{sources[i % len(sources)].name}"
        link.symlink_to(sources[i % len(sources)])
        inputs.append(str(link))
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in inputs))
    out = tmp_path / "results.jsonl"
    args = ["--input", str(listing), "--output", str(out), "--artifacts", str(tiny_registry), "--batch-size", "1"]

    proc = subprocess.Popen([PY, "-m", "cli.batch", "--no-progress", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size > 0):
            assert proc.poll() is None, f"the job exited {proc.returncode} before writing a row"
            assert time.monotonic() < deadline, "no row written in 60 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines_before = out.read_bytes().count(b"\n")
    assert 0 < lines_before < len(inputs), "the kill came too late to test resuming"

    _, err = run_ok(capsys, *args[:-2])
    rows = read_jsonl(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == len(inputs)
    assert set(paths) == set(inputs)
    assert f"{lines_before} of {len(inputs)} inputs are already in" in err
    assert all(r["label"] == Path(os.readlink(r["path"])).parent.name for r in rows)  # rows match their paths

    stdout, _ = run_ok(capsys, *args)  # all done: nothing classified, nothing appended
    assert f"{len(inputs)} inputs in {out}: 0 classified now, {len(inputs)} already done" in stdout
    assert read_jsonl(out) == rows


def test_drop_torn_tail_keeps_whole_lines_only(tmp_path):
    f = tmp_path / "torn.jsonl"
    f.write_bytes(b'{"path": "/a.jpg"}\n{"path": "/b.jpg"}\n{"path": "/c.j')
    with open(f, "r+b") as fh:
        assert drop_torn_tail(fh) == len(b'{"path": "/c.j')
    assert f.read_bytes() == b'{"path": "/a.jpg"}\n{"path": "/b.jpg"}\n'
    f.write_bytes(b'{"path": "/no-newline-at-all')
    with open(f, "r+b") as fh:
        assert drop_torn_tail(fh) > 0
    assert f.read_bytes() == b""
    f.write_bytes(b"whole\n")
    with open(f, "r+b") as fh:
        assert drop_torn_tail(fh) == 0
    assert f.read_bytes() == b"whole\n"


@pytest.mark.parametrize("name", ["r.jsonl", "r.csv"])
def test_a_torn_last_row_is_dropped_and_redone(capsys, tiny_registry, pics, tmp_path, name):
    photos = [str(p) for p in pics["red"][:3] + pics["blue"][:3]]
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p}\n" for p in photos))
    out = tmp_path / name
    args = ["--input", str(listing), "--output", str(out), "--artifacts", str(tiny_registry)]
    run_ok(capsys, *args)
    complete = out.read_bytes()
    last_line_start = complete.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(complete[: last_line_start + (len(complete) - last_line_start) // 2])  # a kill mid-write

    _, err = run_ok(capsys, *args)
    assert "dropped a torn last line" in err
    assert out.read_bytes() == complete  # the same rows, the last one redone, none twice


def test_refuses_to_mix_model_versions_in_one_output(capsys, tiny_registry, pics, tmp_path):
    out = tmp_path / "r.jsonl"
    row = {"path": str(pics["red"][0]), "label": "red", "score": 0.9,
           "probabilities": {"blue": 0.05, "green": 0.05, "red": 0.9},
           "model_version": "20200101-000000-old-0000", "error": None, "detail": None}
    out.write_text(json.dumps(row) + "\n")
    rc, _, err = run(capsys, "--input", str(pics["red"][1]), "--output", str(out), "--artifacts", str(tiny_registry))
    assert rc == 2
    assert "already holds results of model 20200101-000000-old-0000" in err
    assert read_jsonl(out) == [row]


def test_a_second_job_on_the_same_output_is_refused(capsys, tiny_registry, pics, tmp_path):
    import fcntl

    out = tmp_path / "r.jsonl"
    with open(out, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        rc, _, err = run(capsys, "--input", str(pics["red"][0]), "--output", str(out),
                         "--artifacts", str(tiny_registry))
    assert rc == 2 and "is being written by another batch job" in err


def test_usage_errors_exit_2_with_a_message(capsys, tiny_registry, pics, tmp_path):
    rc, _, err = run(capsys, "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r.jsonl"),
                     "--artifacts", str(tiny_registry))
    assert rc == 2 and "is not a folder, a .csv file" in err
    rc, _, err = run(capsys, "--input", str(pics["red"][0]), "--output", str(tmp_path / "r.jsonl"),
                     "--artifacts", str(tmp_path / "empty-registry"))
    assert rc == 2 and "no model has been promoted" in err
    not_results = tmp_path / "other.jsonl"
    not_results.write_text("[1, 2, 3]\n")
    rc, _, err = run(capsys, "--input", str(pics["red"][0]), "--output", str(not_results),
                     "--artifacts", str(tiny_registry))
    assert rc == 2 and "is not a result row of this job" in err
    rc, _, err = run(capsys, "--input", str(pics["red"][0]), "--output", str(tmp_path / "r.jsonl"),
                     "--batch-size", "0")
    assert rc == 2 and "--batch-size and --workers must be at least 1" in err


def test_batch_job_imports_no_torch_no_bentoml_and_no_training_code(tiny_registry, pics, tmp_path):
    out = tmp_path / "r.jsonl"
    code = ("import sys\nfrom cli.batch import main\n"
            f"rc = main(['--input', {str(pics['red'][0])!r}, '--output', {str(out)!r}, "
            f"'--artifacts', {str(tiny_registry)!r}, '--no-progress'])\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'training', 'bentoml', 'service'))\n"
            "assert rc == 0 and not bad, (rc, bad)\n")
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(out)) == 1


def test_ray_engine_without_ray_says_how_to_install(tmp_path):
    # sys.modules[name] = None is how Python marks a module as not importable: `import ray` raises ImportError
    code = ("import sys\nsys.modules['ray'] = None\nfrom cli.batch import main\n"
            f"sys.exit(main(['--input', {str(tmp_path)!r}, '--output', {str(tmp_path / 'r.jsonl')!r},"
            " '--engine', 'ray', '--artifacts', '/nonexistent']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=child_env(),
                          timeout=60)
    assert proc.returncode == 2
    assert "pip install '.[ray]'" in proc.stderr
