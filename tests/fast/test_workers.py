"""The server's layout: one worker per usable CPU by default, their threads shared out, keep-alive connections recycled
so that they spread over the workers, BentoML's tracing off unless asked for."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from imgcls.cpus import usable_cpus
from imgcls.registry import Registry
from service.config import Config
from service.keepalive import ConnectionRecycle, WorkerLoads
from service.lifecycle import ServingWorkers, remove_stale_server_files, server_file
from service.middleware import KEEPALIVE_REQUESTS, ApiLayers
from service.model_holder import ModelHolder
from tests.conftest import ROOT
from tests.live_server import alive
from tests.tiny_model import add_tiny_version


def test_one_worker_per_usable_cpu_and_their_threads_shared_out() -> None:
    cpus = usable_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    default = Config.from_env({})
    assert (default.workers, default.ort_threads, default.decode_threads) == (cpus, 1, 1)
    one = Config.from_env({"WORKERS": "1"})
    assert (one.workers, one.ort_threads, one.decode_threads) == (1, cpus, cpus)
    assert Config.from_env({"WORKERS": "1", "ORT_THREADS": "3", "DECODE_THREADS": "5"}).ort_threads == 3
    with pytest.raises(ValueError, match="WORKERS must be at least 1"):
        Config.from_env({"WORKERS": "0"})


def test_usable_cpus_follows_the_affinity() -> None:
    """Under ``taskset -c 0`` the default is one worker with one ONNX Runtime thread."""
    code = ("import os; os.sched_setaffinity(0, {0}); from service.config import Config; c = Config.from_env({}); "
            "print(c.workers, c.ort_threads)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell them apart")
def test_onnx_runtime_threads_stay_on_the_cpus_given(tmp_path: Path) -> None:
    """Left to itself, ONNX Runtime starts a thread per core of the machine and pins them there, past ``taskset``:
    every session the project opens (``imgcls batch`` included) keeps to the process's CPUs."""
    code = f"""
import os, sys, time
os.sched_setaffinity(0, {{0}})
import onnxruntime as ort
from imgcls.onnx_model import session_options
from tests.tiny_model import tiny_onnx
tiny_onnx(__import__("pathlib").Path({str(tmp_path / "m.onnx")!r}), 2)
session = ort.InferenceSession({str(tmp_path / "m.onnx")!r}, session_options(), providers=["CPUExecutionProvider"])
time.sleep(0.5)  # a pool thread sets its own affinity once it runs
for task in os.listdir("/proc/self/task"):
    status = open(f"/proc/self/task/{{task}}/status").read()
    print([line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")][0])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert set(out.split()) == {"0"}, out


async def _answer(app, client: tuple[str, int], body: bytes = b"") -> dict[bytes, bytes]:
    """One request through ``app`` from ``client`` (a GET, or a POST of ``body``); the answer's headers."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-length", str(len(body)).encode())] if body else []
    scope = {"type": "http", "method": "POST" if body else "GET", "path": "/", "headers": headers, "client": client}
    await app(scope, receive, send)
    return dict(sent[0]["headers"])


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_connection_ends_after_its_quota_of_requests() -> None:
    app = ConnectionRecycle(_ok, max_requests=4, remember=2)

    async def run() -> list[bool]:
        closes = []
        for client in [("10.0.0.1", 5000)] * 9 + [("10.0.0.2", 6000)] * 3:
            closes.append((await _answer(app, client)).get(b"connection") == b"close")
        return closes

    closes = asyncio.run(run())
    # every 4th answer on a connection closes it (the client's next request comes on a new connection); another
    # connection has its own count
    assert closes == [False, False, False, True, False, False, False, True, False, False, False, False]
    assert len(app.served) <= 2  # the counts of the most recent connections only


def test_an_answer_sent_before_the_body_was_read_does_not_close() -> None:
    """A refusal answered before the upload was read (the client may still be sending) keeps the connection: closing
    it would reset it under the client; the next answer closes it instead."""
    async def refuse(scope, receive, send) -> None:  # answers without reading the body
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def reads(scope, receive, send) -> None:
        await receive()
        await _ok(scope, receive, send)

    async def run() -> list[bytes | None]:
        closes, client = [], ("10.0.0.1", 5000)
        app = ConnectionRecycle(refuse, max_requests=2)
        for _ in range(3):
            closes.append((await _answer(app, client, b"x" * 10)).get(b"connection"))
        app.app = reads
        closes.append((await _answer(app, client, b"x" * 10)).get(b"connection"))
        return closes

    assert asyncio.run(run()) == [None, None, None, b"close"]


def test_the_busier_worker_ends_connections_sooner(tmp_path: Path) -> None:
    """Two workers share their loads through one file; the one with clearly more requests in flight ends a
    connection at its next answer, the other keeps its connections to their quota."""
    busy, idle = WorkerLoads(tmp_path / "loads", 1, 2), WorkerLoads(tmp_path / "loads", 2, 2)
    busy.add(5)  # five requests in flight in worker 1, none in worker 2
    assert busy.busier_than_peers() and not idle.busier_than_peers()
    idle.add(4)
    assert not busy.busier_than_peers()  # 5 against 4: close enough
    idle.add(-4)

    async def run(loads: WorkerLoads) -> bytes | None:
        app = ConnectionRecycle(_ok, max_requests=100, loads=loads)
        return (await _answer(app, ("10.0.0.1", 5000))).get(b"connection")

    assert asyncio.run(run(busy)) == b"close" and asyncio.run(run(idle)) is None
    assert (busy.slots[1], idle.slots[2]) == (5, 0)  # each answer's request left the count when it ended
    with pytest.raises(ValueError):
        WorkerLoads(tmp_path / "loads", 3, 2)


def test_several_workers_recycle_connections_and_one_does_not() -> None:
    async def headers(workers: int) -> list[dict[bytes, bytes]]:
        app = ApiLayers(_ok, Config.from_env({"WORKERS": str(workers)}))
        return [await _answer(app, ("10.0.0.1", 5000)) for _ in range(KEEPALIVE_REQUESTS)]

    assert [h.get(b"connection") for h in asyncio.run(headers(2))][-2:] == [None, b"close"]
    assert all(b"connection" not in h for h in asyncio.run(headers(1)))


@pytest.mark.parametrize("tracing", ["", "1"])
def test_workers_and_tracing_reach_bentoml(tracing: str) -> None:
    """BentoML takes both when the service class is decorated; tracing is off unless TRACING=1."""
    code = ("import json, service.service as s; "
            "print(json.dumps([s.SERVICE_OPTIONS.get(k) for k in ('workers', 'tracing')]))")
    env = {**os.environ, "TRACING": tracing, "WORKERS": "3"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [3, None if tracing else {"excluded_urls": [".*"]}]


def test_a_reload_asked_of_one_worker_reaches_the_others(tmp_path: Path) -> None:
    """POST /admin/reload lands on one worker; with polling off, the others must swap too (within a second or two)."""
    registry = Registry(tmp_path / "artifacts")
    old = add_tiny_version(registry, promote=True)
    config = Config.from_env({"ARTIFACTS_DIR": str(registry.root), "MODEL_POLL_S": "0", "WORKERS": "2"})
    asked, sibling = ModelHolder(config), ModelHolder(config)
    for holder in (asked, sibling):
        holder.reload()
    sibling.start_watching()
    new = add_tiny_version(registry, promote=True)
    assert asked.reload_everywhere() == {"version": new, "previous": old, "changed": True}
    deadline = time.monotonic() + 10
    while sibling.classifier.version != new:
        assert time.monotonic() < deadline, "the other worker never reloaded"
        time.sleep(0.1)


def test_the_server_is_ready_only_when_every_worker_serves_a_model(tmp_path: Path) -> None:
    """A request may reach any worker: /readyz says 200 only once all of them hold a model, and not while one that
    held a model is gone."""
    first, second = ServingWorkers(tmp_path / "serving", 1, 2), ServingWorkers(tmp_path / "serving", 2, 2)
    assert not first.all_serving()
    first.mark(True)
    assert not first.all_serving() and not second.all_serving()  # the second is still loading
    second.mark(True)
    assert first.all_serving() and second.all_serving()
    second.mark(False)  # withdrew a broken model
    assert not first.all_serving()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    second.slots[2] = int(gone.stdout)  # a worker that died while serving: its pid is left in its slot
    assert not first.all_serving()
    alone = ServingWorkers(tmp_path / "alone", None, 1)  # outside a BentoML worker: its own state only
    assert not alone.all_serving()
    alone.mark(True)
    assert alone.all_serving()


def test_the_files_of_servers_that_are_gone_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped or killed server leaves its workers' shared files behind; the next worker to start removes them,
    and a server given the pid of an earlier one does not take that one's files for its own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = server_file("load")  # this process's parent stands for the server: it lives
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = [tmp_path / f"imgcls-serving-{gone}-4242", tmp_path / f"imgcls-load-{gone}",  # a server that is gone
             tmp_path / f"imgcls-reload-{os.getpid()}-1"]  # an earlier server with the pid this process has now
    kept = [mine, tmp_path / f"imgcls-load-{os.getppid()}", tmp_path / "imgcls-notes.txt"]
    for path in stale + kept:
        path.write_text("")
    assert mine.name.startswith(f"imgcls-load-{os.getppid()}-") and mine != server_file("serving")
    assert remove_stale_server_files() == len(stale)
    assert [p.exists() for p in stale + kept] == [False] * len(stale) + [True] * len(kept)


SERVER = """
import socket, subprocess, sys, time
listener = socket.create_server(("127.0.0.1", 0))
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(listener.fileno()), sys.argv[2]],
                          pass_fds=[listener.fileno()])
print(worker.pid, flush=True)
time.sleep(float(sys.argv[3]))  # then the server dies, its worker left behind
"""
WORKER = """
import socket, sys, time
from service.lifecycle import exit_with_parent
listener = socket.socket(fileno=int(sys.argv[1]))  # as BentoML's worker takes the server's socket (--fd)
time.sleep(float(sys.argv[2]))  # starting up
exit_with_parent(poll_s=0.1)
time.sleep(60)
"""


@pytest.mark.parametrize(("starting_s", "server_s"), [(0.0, 1.5), (1.5, 0.0)], ids=["died-later", "died-first"])
def test_a_worker_stops_when_its_server_dies_even_before_it_watches(starting_s: float, server_s: float) -> None:
    """A server killed while a worker was still starting had already left it to another parent when it began to
    watch: the worker must stop all the same, and must not stop while its server lives."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, WORKER, str(starting_s), str(server_s)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    worker = int(server.stdout.readline())
    if server_s:
        time.sleep(starting_s + 1.0)
        assert alive(worker), "the worker stopped while its server lived"
    server.wait(10)
    deadline = time.monotonic() + 10
    while alive(worker):
        if time.monotonic() > deadline:
            os.kill(worker, 9)
            pytest.fail("the worker outlived its server")
        time.sleep(0.1)
