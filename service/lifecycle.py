"""Workers that do not outlive their server: BentoML's workers are children of the ``bentoml serve`` process, and
if that one is killed outright (SIGKILL, OOM killer) they would go on holding the port and the model."""
from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["exit_with_parent", "server_file"]

log = logging.getLogger("imgcls.lifecycle")


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Send ourselves SIGTERM (a graceful stop: in-flight requests finish) once our parent process is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("the server process %d is gone; stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def server_file(name: str) -> Path:
    """A file the workers of one server share: named after their parent process, the server."""
    return Path(tempfile.gettempdir()) / f"imgcls-{name}-{os.getppid()}"
