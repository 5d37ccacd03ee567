"""Workers that do not outlive their server: BentoML's workers are children of the ``bentoml serve`` process, and
if that one is killed outright (SIGKILL, OOM killer) they would go on holding the port and the model."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

__all__ = ["exit_with_parent", "linger_after_sigterm"]

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


def linger_after_sigterm(seconds: float) -> None:
    """Keep serving for ``seconds`` after SIGTERM before the server's own shutdown starts.

    The model service needs this: ``bentoml serve`` stops every service at once, and the API service can only
    finish the requests in flight if the model service still answers them meanwhile."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def handler(signum, frame) -> None:  # noqa: ANN001 - signal's signature
        log.info("SIGTERM: still answering for %.0f s while requests in flight finish", seconds)
        timer = threading.Timer(seconds, previous, (signum, frame))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)
