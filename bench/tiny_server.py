"""A real server (``python -m cli serve``) on a tiny real ONNX model (tests/tiny_model.py), for the benchmarks that
measure the HTTP layer, not the network: bench/fuzz.py and bench/bench_upload_memory.py."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FUZZ_SETTINGS = {  # the tokens and limits bench/fuzz.py's corpus is written for
    "ADMIN_TOKEN": "s3cret", "FEEDBACK_TOKEN": "fuzz-feedback", "MAX_BODY_BYTES": str(2 * 1024 * 1024),
    "FEEDBACK_RATE": "1000", "FEEDBACK_BURST": "1000",
}


@contextmanager
def serve_tiny(workdir: Path, log: Path, **env: str) -> Iterator[tuple[str, int]]:
    """Yields (base URL, the server's pid: the workers are its descendants). No refusal throttle
    (``REFUSAL_RATE=0``: one client sending bad input on purpose); ``env`` adds or overrides settings."""
    from imgcls.registry import Registry
    from tests.live_server import free_port, server_process
    from tests.tiny_model import add_tiny_version

    reg = Registry(workdir / "artifacts")
    add_tiny_version(reg, promote=True)
    port = free_port()
    settings = {"ARTIFACTS_DIR": str(reg.root), "BENTOML_DO_NOT_TRACK": "true", "BENTOML_DISABLE_GPU_ALLOCATION": "1",
                "REFUSAL_RATE": "0", "PYTHONUNBUFFERED": "1", **env}
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, port, {**os.environ, **settings}, log, probe="/readyz", timeout=90) as url:
        yield url, _child_serving(port)


def _child_serving(port: int) -> int:
    """The pid of this process's child that serves ``port`` (``cli serve`` execs ``bentoml serve``)."""
    wanted = f"\0{port}\0".encode()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and wanted in Path(f"/proc/{entry}/cmdline").read_bytes() + b"\0":
                status = Path(f"/proc/{entry}/status").read_text()
                if f"\nPPid:\t{os.getpid()}\n" in status:
                    return int(entry)
        except OSError:
            continue
    raise RuntimeError(f"no child process serves port {port}")
