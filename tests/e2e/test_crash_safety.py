"""SIGKILL at random moments (and at exact steps) during feedback storage, promotion and a batch job: nothing
acknowledged is lost, no store holds a torn or half-written file, and the registry is one that ``promote`` and the
service still accept. 50+ kills in all, each followed by the checks.

The workloads are the real code (tests/crash_child.py runs :class:`FeedbackStore` and :func:`promote` as the
service and ``training promote`` call them; the batch job is ``python -m cli batch``), and three rounds kill a real
server's whole process group in the middle of concurrent feedback uploads.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from imgcls.feedback import FeedbackStore
from imgcls.registry import Registry, verify
from tests import synthetic
from tests.conftest import PY, ROOT, child_env, run_cli
from tests.live_server import free_port
from tests.tiny_model import add_tiny_version

# Kills per test: 20 + 16 + at least 12 + 3 = at least 51 in all.


def _run(args: list[str], out: Path, env: dict[str, str] | None = None, kill_after: float | None = None) -> int:
    """Run ``python -m tests.crash_child ARGS`` (stdout to ``out``); SIGKILL it ``kill_after`` s after it is
    ready, or let it run until it kills itself (``CRASH_AT``). Returns its exit status."""
    with open(out, "w") as f:
        proc = subprocess.Popen([PY, "-m", "tests.crash_child", *args], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT, env=child_env(**(env or {})))
    deadline = time.monotonic() + 60
    while "READY" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def _acks(out: Path) -> list[list[str]]:
    lines = out.read_text().splitlines()
    assert not any("Traceback" in ln for ln in lines), out.read_text()[-3000:]
    return [ln.split()[1:] for ln in lines if ln.startswith("ACK ")]


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode is a torn image
        return False


def _check_feedback_store(root: Path, acked: set[tuple[str, str]]) -> None:
    for label, sha in acked:
        assert _decodes(root / label / f"{sha}.jpg"), f"acknowledged {label}/{sha} is lost or torn"
    visible = [p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if not p.name.startswith(".")]
    assert all(_decodes(p) for p in visible), [p for p in visible if not _decodes(p)]
    store = FeedbackStore(root)  # what the service does when it starts again
    assert store.files == len(visible)
    leftovers = [p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"half-written files left behind: {leftovers}"


def test_feedback_storage_survives_sigkill(tmp_path: Path) -> None:
    root, acked, rng = tmp_path / "feedback", set(), random.Random(20)
    plans = [{"CRASH_AT": f"{op}:{n}"} for op in ("fsync", "replace") for n in (1, 2, 3)] + [None] * 14
    for i, plan in enumerate(plans):
        out = tmp_path / f"round{i}.out"
        status = _run(["feedback", str(root), str(i * 1000)], out, env=plan,
                      kill_after=None if plan else rng.uniform(0.05, 0.6))
        assert status == -signal.SIGKILL, out.read_text()[-2000:]
        acked |= {tuple(a) for a in _acks(out)}
        _check_feedback_store(root, acked)
    assert len(acked) > 20  # the rounds really stored things between the kills


def _check_registry(root: Path, versions: list[str], acked: list[str]) -> None:
    registry = Registry(root)
    current = registry.current()
    assert current in versions
    verify(registry.resolve("current"))
    log = [json.loads(line) for line in (root / "promotions.jsonl").read_text().splitlines()]
    # Every version the pointer names is in the log (written ahead): the pointer is the last entry's version, or,
    # when a kill cut that promotion short, still its "previous".
    assert current in (log[-1]["version"], log[-1]["previous"]), (current, log[-3:])
    if acked:
        assert acked[-1] in (log[-1]["version"], log[-1]["previous"], log[-2]["version"])


def test_promotion_survives_sigkill(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    registry = Registry(root)
    versions = [add_tiny_version(registry, seed=s, promote=s == 0) for s in range(3)]
    rng = random.Random(21)
    plans = [{"CRASH_AT": f"{op}:{n}"} for op in ("fsync", "replace") for n in (1, 2, 3, 4)] + [None] * 8
    for i, plan in enumerate(plans):
        out = tmp_path / f"round{i}.out"
        status = _run(["promote", str(root), *versions], out, env=plan,
                      kill_after=None if plan else rng.uniform(0.02, 0.5))
        assert status == -signal.SIGKILL, out.read_text()[-2000:]
        _check_registry(root, versions, [a[0] for a in _acks(out)])
    # The registry is one that the real CLI promotes in, and that the service serves from.
    run_cli("promote", versions[1], artifacts=root)
    _serve_and_classify(root, tmp_path / "server.log", versions[1])


def _serve_and_classify(root: Path, log: Path, version: str) -> None:
    from tests.conftest import serve

    with serve(root, log) as url:
        r = httpx.post(f"{url}/classify", content=synthetic.image_bytes("red", 1),
                       headers={"content-type": "image/jpeg"},
                       timeout=30)
        assert r.status_code == 200 and r.json()["model"]["version"] == version, r.text


def test_batch_job_survives_sigkill_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    add_tiny_version(Registry(root), promote=True)
    images = tmp_path / "images"
    for label in synthetic.CLASSES:
        (images / label).mkdir(parents=True)
        for i in range(100):
            (images / label / f"{i}.jpg").write_bytes(synthetic.image_bytes(label, i, size=(64, 48)))
    (images / "red" / "broken.jpg").write_bytes(b"not an image")
    n_inputs = 3 * 100 + 1
    output = tmp_path / "results.jsonl"
    # One image a batch: a row (and an fsync) at a time, so that the kills land between and during writes.
    cmd = [PY, "-m", "cli", "batch", "--input", str(images), "--output", str(output), "--artifacts", str(root),
           "--no-progress", "--batch-size", "1", "--threads", "1", "--workers", "1"]
    rng, kills = random.Random(22), 0
    for _ in range(15):
        before = _lines(output)
        target = before + rng.randint(1, 15)  # killed once this many rows are there, whenever that is
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
        deadline = time.monotonic() + 60
        while proc.poll() is None and _lines(output) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            break  # it finished first
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        complete = output.read_bytes().rsplit(b"\n", 1)[0]
        rows = [json.loads(line) for line in complete.splitlines() if line]  # whole lines: all valid rows
        assert len({r["path"] for r in rows}) == len(rows)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == n_inputs and len({r["path"] for r in rows}) == n_inputs
    assert sum(r["error"] is not None for r in rows) == 1
    assert kills >= 12, kills


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_killed_server_loses_no_acknowledged_feedback(tmp_path: Path) -> None:
    root, feedback_dir = tmp_path / "artifacts", tmp_path / "feedback"
    add_tiny_version(Registry(root), promote=True)
    rng, acked = random.Random(23), set()
    for round_ in range(3):
        port = free_port()
        env = child_env(ARTIFACTS_DIR=str(root), FEEDBACK_DIR=str(feedback_dir), FEEDBACK_OPEN="1",
                        FEEDBACK_RATE="1000", FEEDBACK_BURST="1000", BENTOML_DISABLE_GPU_ALLOCATION="1")
        with open(tmp_path / f"server{round_}.log", "w") as log:
            proc = subprocess.Popen([PY, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        stop = threading.Event()

        def client(worker: int, url: str = url, stop: threading.Event = stop, round_: int = round_) -> None:
            with httpx.Client(timeout=10) as http:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    label = ("cat", "dog")[i % 2]
                    data = synthetic.image_bytes("red", round_ * 1_000_000 + worker * 10_000 + i, size=(64, 48))
                    try:
                        r = http.post(f"{url}/feedback", files={"image": ("x.jpg", data, "image/jpeg")},
                                      data={"label": label})
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 201:
                        acked.add((label, r.json()["sha256"]))

        threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 2.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
        _check_feedback_store(feedback_dir, acked)
    assert len(acked) > 10


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready")
