"""The batch inference job (python -m service.batch) end to end: the real CLI, a real trained ONNX model and real
photos read in place; kills with SIGKILL and resumes; the Ray engine on a local Ray."""
from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, PY, ROOT, child_env, needs_data

pytestmark = needs_data
TEST_CATS = sorted((DATA / "test" / "cat").glob("*.jpg"))
TEST_DOGS = sorted((DATA / "test" / "dog").glob("*.jpg"))


def batch_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m service.batch ARGS`` as a user runs it."""
    return subprocess.run([PY, "-m", "service.batch", "--no-progress", *args], cwd=ROOT, capture_output=True,
                          text=True, env=child_env(), timeout=timeout)


def run_ok(*args: str) -> subprocess.CompletedProcess:
    proc = batch_cli(*args)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def current_version(artifacts: Path) -> str:
    return (artifacts / "current").read_text().strip()


def true_label(path: str) -> str:
    return Path(path).parent.name


def assert_prediction(row: dict, version: str) -> None:
    assert row["error"] is None and row["detail"] is None
    assert row["model_version"] == version
    probs = row["probabilities"]
    assert set(probs) == {"cat", "dog"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert row["label"] == max(probs, key=probs.get)
    assert row["score"] == probs[row["label"]]


def make_bad_files(folder: Path) -> tuple[Path, Path]:
    """A text file named .jpg and a real JPEG cut to 60% of its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes-not-a-photo.jpg"
    text.write_text("this is not an image\n")
    data = TEST_DOGS[0].read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    return text, truncated


def test_folder_input_recursive_with_error_rows(trained, tmp_path):
    tree = tmp_path / "photos"
    (tree / "a" / "b").mkdir(parents=True)
    shutil.copy(TEST_CATS[0], tree / "a" / "cat.jpg")
    shutil.copy(TEST_DOGS[1], tree / "a" / "b" / "dog.JPG")  # extensions match case-insensitively
    shutil.copy(TEST_CATS[2], tree / "top-cat.jpeg")
    (tree / "README.txt").write_text("not an image extension: not an input")
    text, truncated = make_bad_files(tree / "a" / "bad")
    out = tmp_path / "results.jsonl"

    proc = run_ok("--input", str(tree), "--output", str(out), "--artifacts", str(trained))

    rows = {r["path"]: r for r in read_jsonl(out)}
    assert len(rows) == len(read_jsonl(out)) == 5
    version = current_version(trained)
    for name, label in [("a/cat.jpg", "cat"), ("a/b/dog.JPG", "dog"), ("top-cat.jpeg", "cat")]:
        row = rows[str(tree / name)]
        assert_prediction(row, version)
        assert row["label"] == label
    assert rows[str(text)]["error"] == "not_an_image"
    assert rows[str(truncated)]["error"] == "corrupt"
    for bad in (text, truncated):
        assert rows[str(bad)]["label"] is None and rows[str(bad)]["detail"]
        assert rows[str(bad)]["model_version"] == version
    # the summary: counts by label and errors, on stdout
    assert "5 inputs" in proc.stdout
    assert "cat          2" in proc.stdout and "dog          1" in proc.stdout
    assert "errors       2 (corrupt: 1, not_an_image: 1)" in proc.stdout


def test_same_probabilities_as_the_service_path(trained, tmp_path):
    """The job's numbers equal decode_image + Preprocess + OnnxClassifier, the code the service runs."""
    from imgcls.images import decode_image
    from imgcls.onnx_model import OnnxClassifier
    from imgcls.registry import Registry

    photos = [TEST_CATS[5], TEST_DOGS[5], TEST_DOGS[6]]
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p}\n" for p in photos))
    out = tmp_path / "r.jsonl"
    run_ok("--input", str(listing), "--output", str(out), "--artifacts", str(trained), "--batch-size", "2")

    model = OnnxClassifier(Registry(trained).resolve("current"), device="cpu")
    batch = np.stack([model.preprocess(decode_image(p, draft_size=model.preprocess.resize_size)) for p in photos])
    expected = model.predict(batch)
    rows = read_jsonl(out)
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    for row, probs in zip(rows, expected):
        assert [row["probabilities"][label] for label in model.labels] == pytest.approx(probs.tolist(), abs=1e-5)


def test_glob_input_to_csv_output(trained, tmp_path):
    pattern = str(DATA / "test" / "*" / "*.1[0-9]*.jpg")  # both classes: cat.1*.jpg and dog.1*.jpg
    expected = sorted(os.path.abspath(p) for p in glob.glob(pattern))
    assert 10 <= len(expected) <= 60
    out = tmp_path / "results.csv"

    run_ok("--input", pattern, "--output", str(out), "--artifacts", str(trained))

    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "score", "probabilities", "model_version", "error", "detail"]
        rows = list(reader)
    assert sorted(r["path"] for r in rows) == expected
    correct = 0
    for r in rows:
        probs = json.loads(r["probabilities"])
        assert r["label"] == max(probs, key=probs.get) and float(r["score"]) == probs[r["label"]]
        assert r["error"] == "" and r["model_version"] == current_version(trained)
        correct += r["label"] == true_label(r["path"])
    assert correct / len(rows) >= 0.9


def test_csv_list_path_column_relative_paths_and_missing_files(trained, tmp_path):
    listdir = tmp_path / "lists"
    (listdir / "imgs").mkdir(parents=True)
    shutil.copy(TEST_CATS[3], listdir / "imgs" / "local-cat.jpg")
    listing = listdir / "todo.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "note"])
        w.writerow(["1", "imgs/local-cat.jpg", "relative to the CSV's folder"])
        w.writerow(["2", str(TEST_DOGS[3]), "absolute, read in place"])
        w.writerow(["3", "imgs/missing.jpg", "does not exist"])
        w.writerow(["4", str(TEST_DOGS[3]), "a duplicate: one row"])
    out = tmp_path / "out" / "results.jsonl"  # the output's folder is created

    run_ok("--input", str(listing), "--output", str(out), "--artifacts", str(trained))

    rows = read_jsonl(out)
    assert [r["path"] for r in rows] == [str(listdir / "imgs" / "local-cat.jpg"), str(TEST_DOGS[3]),
                                         str(listdir / "imgs" / "missing.jpg")]
    assert rows[0]["label"] == "cat" and rows[1]["label"] == "dog"
    assert rows[2]["error"] == "not_found" and rows[2]["label"] is None


def test_csv_list_first_column_with_and_without_header(trained, tmp_path):
    for i, header in enumerate(["file,comment\n", ""]):
        listing = tmp_path / f"list{i}.csv"
        listing.write_text(header + f"{TEST_CATS[7]},x\n{TEST_DOGS[7]},y\n")
        out = tmp_path / f"r{i}.jsonl"
        run_ok("--input", str(listing), "--output", str(out), "--artifacts", str(trained))
        assert [(r["path"], r["label"]) for r in read_jsonl(out)] == [(str(TEST_CATS[7]), "cat"),
                                                                    (str(TEST_DOGS[7]), "dog")]


def test_sigkill_then_resume_gives_exactly_one_row_per_input(trained, tmp_path):
    inputs = [str(p) for p in TEST_CATS[:75] + TEST_DOGS[:75]]
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{p}\n" for p in inputs))
    out = tmp_path / "results.jsonl"
    args = ["--input", str(listing), "--output", str(out), "--artifacts", str(trained), "--batch-size", "4"]

    proc = subprocess.Popen([PY, "-m", "service.batch", "--no-progress", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.stat().st_size > 0):
            assert proc.poll() is None, f"the job exited {proc.returncode} before writing a row"
            assert time.monotonic() < deadline, "no row written in 120 s"
            time.sleep(0.01)
        time.sleep(0.1)  # a few more batches in flight
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines_before = out.read_bytes().count(b"\n")
    assert 0 < lines_before < len(inputs), "the kill came too late to test resuming"

    second = run_ok(*args)
    rows = read_jsonl(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == len(inputs)
    assert set(paths) == set(inputs)
    assert f"{lines_before} of {len(inputs)} inputs are already in" in second.stderr
    assert sum(r["label"] == true_label(r["path"]) for r in rows) / len(rows) >= 0.9  # rows match their paths

    third = run_ok(*args)  # all done: nothing classified, nothing appended
    assert f"{len(inputs)} inputs in {out}: 0 classified now, {len(inputs)} already done" in third.stdout
    assert read_jsonl(out) == rows


def test_torn_last_line_is_dropped_and_redone(trained, tmp_path):
    from service.batch import drop_torn_tail

    # the function on its own
    f = tmp_path / "torn.jsonl"
    f.write_bytes(b'{"path": "/a.jpg"}\n{"path": "/b.jpg"}\n{"path": "/c.j')
    with open(f, "r+b") as fh:
        assert drop_torn_tail(fh) == len(b'{"path": "/c.j')
    assert f.read_bytes() == b'{"path": "/a.jpg"}\n{"path": "/b.jpg"}\n'
    f.write_bytes(b'{"path": "/no-newline-at-all')
    with open(f, "r+b") as fh:
        assert drop_torn_tail(fh) > 0
    assert f.read_bytes() == b""

    # and in the job: cut the last row in half, as a kill during a write leaves it
    photos = [str(p) for p in TEST_CATS[10:13] + TEST_DOGS[10:13]]
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p}\n" for p in photos))
    for name in ("r.jsonl", "r.csv"):
        out = tmp_path / name
        args = ["--input", str(listing), "--output", str(out), "--artifacts", str(trained)]
        run_ok(*args)
        complete = out.read_bytes()
        last_line_start = complete.rstrip(b"\n").rfind(b"\n") + 1
        out.write_bytes(complete[: last_line_start + (len(complete) - last_line_start) // 2])

        proc = run_ok(*args)
        assert "dropped a torn last line" in proc.stderr
        assert out.read_bytes() == complete  # the same rows, the last one redone, none twice


def test_refuses_to_mix_model_versions_in_one_output(trained, tmp_path):
    out = tmp_path / "r.jsonl"
    row = {"path": str(TEST_CATS[0]), "label": "cat", "score": 0.9, "probabilities": {"cat": 0.9, "dog": 0.1},
           "model_version": "20200101-000000-old-0000", "error": None, "detail": None}
    out.write_text(json.dumps(row) + "\n")
    proc = batch_cli("--input", str(TEST_CATS[1]), "--output", str(out), "--artifacts", str(trained))
    assert proc.returncode == 2
    assert "already holds results of model 20200101-000000-old-0000" in proc.stderr
    assert read_jsonl(out) == [row]


def test_usage_errors_exit_2_with_a_message(trained, tmp_path):
    proc = batch_cli("--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r.jsonl"),
                     "--artifacts", str(trained))
    assert proc.returncode == 2 and "is not a folder, a .csv file" in proc.stderr
    proc = batch_cli("--input", str(TEST_CATS[0]), "--output", str(tmp_path / "r.jsonl"),
                     "--artifacts", str(tmp_path / "empty-registry"))
    assert proc.returncode == 2 and "no model has been promoted" in proc.stderr
    not_results = tmp_path / "other.jsonl"
    not_results.write_text("[1, 2, 3]\n")
    proc = batch_cli("--input", str(TEST_CATS[0]), "--output", str(not_results), "--artifacts", str(trained))
    assert proc.returncode == 2 and "is not a result row of this job" in proc.stderr


def test_batch_job_imports_no_torch_and_no_training_code(trained, tmp_path):
    out = tmp_path / "r.jsonl"
    code = ("import sys\nfrom service.batch import main\n"
            f"rc = main(['--input', {str(TEST_CATS[0])!r}, '--output', {str(out)!r}, '--artifacts', {str(trained)!r},"
            " '--no-progress'])\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training'))\n"
            "assert rc == 0 and not bad, (rc, bad)\n")
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(out)) == 1


def test_ray_engine_without_ray_says_how_to_install(tmp_path):
    # sys.modules[name] = None is how Python marks a module as not importable: `import ray` raises ImportError
    code = ("import sys\nsys.modules['ray'] = None\nfrom service.batch import main\n"
            f"sys.exit(main(['--input', {str(TEST_CATS[0])!r}, '--output', {str(tmp_path / 'r.jsonl')!r},"
            " '--engine', 'ray', '--artifacts', '/nonexistent']))\n")
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 2
    assert "pip install '.[ray]'" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed: pip install '.[ray]'")
def test_ray_engine_matches_local_engine_and_resumes(trained, tmp_path):
    photos = tmp_path / "photos"
    for src in TEST_CATS[20:32] + TEST_DOGS[20:32]:
        (photos / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, photos / src.parent.name / src.name)
    make_bad_files(photos / "bad")
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["--input", str(photos), "--artifacts", str(trained), "--batch-size", "8"]
    run_ok(*common, "--output", str(local_out))

    # resumability: the first 10 rows are already there and must not be redone
    local_rows = read_jsonl(local_out)
    ray_out.write_text("".join(json.dumps(r) + "\n" for r in local_rows[:10]))
    proc = run_ok(*common, "--output", str(ray_out), "--engine", "ray")
    assert "10 of 26 inputs are already in" in proc.stderr

    ray_rows = {r["path"]: r for r in read_jsonl(ray_out)}
    assert len(ray_rows) == len(read_jsonl(ray_out)) == len(local_rows) == 26
    for row in local_rows:
        other = ray_rows[row["path"]]
        assert other["label"] == row["label"] and other["error"] == row["error"]
        if row["error"] is None:
            assert other["score"] == pytest.approx(row["score"], abs=1e-5)
    assert sum(r["error"] is not None for r in ray_rows.values()) == 2


def test_bench_reports_job_and_model_only_throughput(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in TEST_CATS[40:60] + TEST_DOGS[40:60]:
        shutil.copy(src, photos / src.name)
    figures = tmp_path / "bench.json"
    proc = subprocess.run([PY, "-m", "bench.bench_batch", "--artifacts", str(trained), "--data", str(photos),
                           "--rounds", "1", "--batch-size", "8", "--json", str(figures)],
                          cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(figures.read_text())
    assert r["images"] == 40 and r["batch_size"] == 8
    assert r["job_images_per_s"] > 0 and r["model_only_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["job_images_per_s"] / r["model_only_images_per_s"], rel=0.01)
    assert f"ratio job / model-only: {r['ratio']:.3f}" in proc.stdout
