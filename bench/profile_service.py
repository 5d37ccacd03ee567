"""Where a loaded service spends its CPU: per-thread CPU from ``/proc`` and py-spy's sampled stacks.

    python -m bench.profile_service [--artifacts DIR] [--clients 16] [--seconds 15] [--env K=V ...] [--pyspy]
                                    [--raw OUT.txt]

Starts ``imgcls serve`` (``--env`` settings on top), warms it up, loads it with ``--clients`` clients posting the
test photos as multipart uploads (as ``bench.bench_peers`` does) for about ``--seconds``, and prints:
- the CPU per request of the whole process tree, and of each of its threads grouped by name (``/proc/*/task``);
- with ``--pyspy`` (py-spy on the registry: ``pip install py-spy``), py-spy's samples of the worker process during
  the load (``--native``, idle threads left out), summed by what they run: a leaf frame's library or module.
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


def thread_ticks(pids: list[int]) -> dict[tuple[int, int, str], int]:
    """utime + stime of every thread of ``pids``, keyed (pid, tid, thread name)."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1: stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[(pid, int(task.name), name)] = int(fields[11]) + int(fields[12])
    return out


def _group(name: str) -> str:
    """Thread names without their numbers: 'AnyIO worker', 'python' ..."""
    return re.sub(r"[-_ ]?\d+$", "", name) or name


IDLE = ("Condition.wait", "Queue.get", "time_sleep", "clock_nanosleep", "epoll_pwait", "pthread_cond", "select.")
NATIVE = (("onnxruntime", "ONNX Runtime (native)"), ("openblas", "OpenBLAS (numpy's BLAS threads)"),
          ("ImagingResample", "Pillow resize (native)"), ("jpeg", "JPEG decoding (native)"),
          ("ImagingDecode", "Pillow decoding (native)"))


def classify_frame(stack: str) -> str:
    """What a sampled stack is doing: 'idle' when it waits, else its native library of note, else the innermost
    Python package (or project module) on it."""
    if any(key in stack for key in IDLE):
        return "idle (waiting)"
    frames = stack.split(";")
    for key, label in NATIVE:
        if key in frames[-1] or (key == "openblas" and key in stack):
            return label
    for f in reversed(frames):
        m = re.search(r"\(([\w/.<>-]+?)\.py:\d+\)", f)
        if m:
            parts = m.group(1).split("/")
            return "/".join(parts[:2]) if parts[0] in ("service", "imgcls", "bench") else parts[0]
    return frames[-1].split(" ")[0][:60]


def pyspy(pid: int, seconds: float, raw: Path) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--native",
                             "--format", "raw", "--rate", "50", "--output", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def summarize_raw(raw: Path, top: int = 25) -> list[tuple[str, float]]:
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[classify_frame(stack)] += int(n)
    total = sum(counts.values()) or 1
    return [(k, 100 * v / total) for k, v in counts.most_common(top)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="current")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--pyspy", action="store_true")
    p.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = p.parse_args()

    model_dir = Registry(args.artifacts).resolve(args.model)
    bodies = [path.read_bytes() for path in test_photos()]
    tag, port = uuid.uuid4().hex, free_port()
    launch = _service(**dict(kv.split("=", 1) for kv in args.env))(model_dir, port, Path(tempfile.gettempdir()), "")
    log = Path(tempfile.gettempdir()) / "profile_service.log"
    print(f"load average {os.getloadavg()[0]:.1f}; settings {args.env or 'default'}", flush=True)
    with server(launch.cmd, port, {**launch.env, TAG: tag}, log) as base:
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
    for key, t in after.items():
        groups[(key[0], _group(key[2]))] += t - before.get(key, 0)
    for (pid, name), ticks in groups.most_common():
        if ticks:
            print(f"  pid {pid:7} {name:28} {1000 * ticks / _TICK / total:6.2f} ms/request")
    busiest = sorted(((t - before.get(k, 0), k) for k, t in after.items()), reverse=True)[:8]
    print("  busiest threads: " + ", ".join(f"tid {k[1]} {1000 * t / _TICK / total:.2f}" for t, k in busiest if t))
    if args.pyspy:
        print("py-spy samples of the busiest process (wall-clock samples of every thread, native frames), by what "
              "they run:")
        for what, share in summarize_raw(raw):
            print(f"  {share:5.1f}%  {what}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
