"""Where a loaded service spends its CPU: per-thread CPU from ``/proc`` and py-spy's sampled stacks.

    python -m bench.profile_service [--artifacts DIR] [--clients 16] [--seconds 15] [--env K=V ...] [--pyspy]
                                    [--raw OUT.txt] [--server-cpus 0]

Starts ``imgcls serve`` (``--env`` settings on top), warms it up, loads it with ``--clients`` clients posting the
test photos as multipart uploads (as ``bench.bench_peers`` does) for about ``--seconds``, and prints:
- the CPU per request of the whole process tree, and of each of its threads grouped by name (``/proc/*/task``), with
  their minor page faults (memory the kernel had to map afresh);
- with ``--pyspy`` (py-spy on the registry: ``pip install py-spy``), py-spy's samples of the worker process during
  the load (``--native``; samples of waiting threads left out), summed by stage of the request path. py-spy sees
  Python threads only: ONNX Runtime's and OpenBLAS's own threads show in the per-thread CPU, not here.
``--server-cpus`` pins the server (``taskset``) apart from the load generator (run this under ``taskset`` on others).
The machine's load average is printed too: other jobs on a shared machine move every figure.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from bench.bench_peers import FIELD, _service
from bench.common import load, test_photos
from bench.proc_cpu import TAG, tree_ticks
from imgcls.registry import Registry
from tests.live_server import free_port
from tests.live_server import server_process as server

_TICK = os.sysconf("SC_CLK_TCK")


def thread_ticks(pids: list[int]) -> dict[tuple[int, int, str], tuple[int, int]]:
    """(utime + stime, minor page faults) of every thread of ``pids``, keyed (pid, tid, thread name)."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1: stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[(pid, int(task.name), name)] = int(fields[11]) + int(fields[12]), int(fields[7])
    return out


def _group(name: str) -> str:
    """Thread names without their numbers: 'AnyIO worker', 'python' ..."""
    return re.sub(r"[-_ ]?\d+$", "", name) or name


IDLE = ("Condition.wait", "Queue.get", "time_sleep", "clock_nanosleep", "epoll_pwait", "pthread_cond")
# Event-loop stages, matched against a stack's frames innermost first (py-spy names a frame "func (pkg/mod.py:N)")
LOOP_STAGES = (("OpenTelemetry (BentoML's tracing middleware)",
                ("(trace/", "(asgi/__init__", "(context/", "(propagate/")),
               ("request id (uuid4: a getrandom call)", ("(uuid.py",)),
               ("multipart parsing, upload spooled to a temporary file",
                ("python_multipart", "(tempfile.py", "(pathlib.py", "formparsers")),
               ("this service's middlewares", ("service/uploads", "service/logs", "service/metrics", "service/throttle",
                                               "service/errors", "service/middleware")),
               ("BentoML dispatch, pydantic", ("_bentoml_sdk", "_bentoml_impl", "pydantic")),
               ("thread hand-offs (anyio, queue)", ("(queue.py", "anyio/", "(threading.py")),
               ("uvicorn, starlette (HTTP)", ("uvicorn", "starlette", "httptools")))


def stage(stack: str) -> str:
    """Which stage of the request path a sampled stack (frames joined by ';', outermost first) is in."""
    if any(key in stack for key in IDLE):
        return "idle (waiting)"
    if "Inference.infer" in stack:
        what = ("ONNX Runtime" if "onnxruntime" in stack else "open-set scores (numpy)" if "novelty" in stack
                else "normalize" if "normalize" in stack else "other")
        return f"inference thread: {what}"
    if "_decode.<locals>.work" in stack:
        return "decoding threads (Pillow decode, resize, crop)"
    for frame in reversed(stack.split(";")):
        for name, keys in LOOP_STAGES:
            if any(key in frame for key in keys):
                return f"event loop: {name}"
    return "event loop: other"


def pyspy(pid: int, seconds: float, raw: Path) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--native",
                             "--format", "raw", "--rate", "50", "--output", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def summarize_raw(raw: Path) -> list[tuple[str, float]]:
    """py-spy's collapsed stacks as (stage, share of the samples that were not waiting, in %)."""
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[stage(stack)] += int(n)
    busy = sum(v for k, v in counts.items() if not k.startswith("idle")) or 1
    return [(k, 100 * v / busy) for k, v in counts.most_common() if not k.startswith("idle")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="current")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--pyspy", action="store_true")
    p.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    p.add_argument("--server-cpus", help="the CPUs the server is pinned to (taskset -c), e.g. 0")
    args = p.parse_args()

    model_dir = Registry(args.artifacts).resolve(args.model)
    bodies = [path.read_bytes() for path in test_photos()]
    tag, port = uuid.uuid4().hex, free_port()
    launch = _service(**dict(kv.split("=", 1) for kv in args.env))(model_dir, port, Path(tempfile.gettempdir()), "")
    log = Path(tempfile.gettempdir()) / "profile_service.log"
    print(f"load average {os.getloadavg()[0]:.1f}; settings {args.env or 'default'}", flush=True)
    cmd = ["taskset", "-c", args.server_cpus, *launch.cmd] if args.server_cpus else launch.cmd
    with server(cmd, port, {**launch.env, TAG: tag}, log) as base:
        rps = load(base, bodies, args.clients, 8 * args.clients, field=FIELD)["rps"]  # warm-up, and the rate
        total = max(2 * args.clients, round(rps * args.seconds))
        pids = sorted(tree_ticks(tag))
        before_tree, before = tree_ticks(tag), thread_ticks(pids)
        spy = None
        if args.pyspy:
            worker = max(pids, key=lambda pid: before_tree[pid])  # the busiest process: the worker
            raw = args.raw or Path(tempfile.mkdtemp()) / "pyspy.txt"
            spy = threading.Timer(1.0, lambda: setattr(main, "proc", pyspy(worker, args.seconds - 3, raw)))
            spy.start()
        run = load(base, bodies, args.clients, total, field=FIELD)
        after_tree, after = tree_ticks(tag), thread_ticks(pids)
        if spy:
            spy.join()
            main.proc.wait(60)
    cpu_ms = 1000 * sum(t - before_tree.get(pid, 0) for pid, t in after_tree.items()) / _TICK / total
    print(f"{args.clients} clients: {run['rps']:.1f} req/s, p99 {run['p99_ms']:.0f} ms, "
          f"whole tree {cpu_ms:.2f} ms of CPU per request ({len(pids)} processes)")
    groups: collections.Counter = collections.Counter()
    faults: collections.Counter = collections.Counter()
    for key, (t, f) in after.items():
        t0, f0 = before.get(key, (0, 0))
        groups[(key[0], _group(key[2]))] += t - t0
        faults[(key[0], _group(key[2]))] += f - f0
    for (pid, name), ticks in groups.most_common():
        if ticks:
            print(f"  pid {pid:7} {name:28} {1000 * ticks / _TICK / total:6.2f} ms/request, "
                  f"{faults[(pid, name)] / total:6.1f} minor page faults/request")
    busiest = sorted(((t - before.get(k, (0, 0))[0], k) for k, (t, _) in after.items()), reverse=True)[:8]
    print("  busiest threads: " + ", ".join(f"tid {k[1]} {1000 * t / _TICK / total:.2f}" for t, k in busiest if t))
    if args.pyspy:
        print("py-spy samples of the busiest process (every Python thread, native frames; the samples that were not "
              "waiting), by stage:")
        for what, share in summarize_raw(raw):
            print(f"  {share:5.1f}%  {what}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
