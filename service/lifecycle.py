"""The processes of one server: BentoML's workers are children of the ``bentoml serve`` process and share one
listening socket.

- :func:`exit_with_parent`: if the server is killed outright (SIGKILL, OOM killer) its workers would go on holding
  the port and the model; each stops itself instead.
- :func:`shared_slots`: int64 slots in a file every worker of the server maps (:func:`server_file`), one per worker;
  :func:`remove_stale_server_files` removes the files of servers that are gone.
- :class:`ServingWorkers`: which workers serve a model now; the server is ready when all of them do, since a request
  may reach any of them.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["ServingWorkers", "exit_with_parent", "remove_stale_server_files", "server_file", "shared_slots"]

log = logging.getLogger("imgcls.lifecycle")
SLOTS = 256  # workers of one server that can share a file of slots (their indexes start at 1)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Send ourselves SIGTERM (a graceful stop: in-flight requests finish) once our parent process is gone.

    A server killed while this worker was still starting has already left it to another parent (init, or a
    subreaper): a parent that holds none of our sockets when we begin is not the server that handed us its listening
    socket. (Only then: a server stopping gracefully closes its socket before it stops its workers.)"""
    parent = os.getppid()

    def watch() -> None:
        if _shares_a_socket(parent):
            while os.getppid() == parent:
                time.sleep(poll_s)
        log.error("the server process is gone (parent %d); stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _sockets(pid: int | str) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _shares_a_socket(pid: int) -> bool:
    try:
        return bool(_sockets("self") & _sockets(pid))
    except OSError:  # no /proc here, or not ours to read: assume it is still our server
        return True


def server_file(name: str) -> Path:
    """A file the workers of one server share: named after their parent process, the server, and its start time
    (a later server given the same pid must not read this one's slots)."""
    server = os.getppid()
    return Path(tempfile.gettempdir()) / f"{_PREFIX}{name}-{server}-{_start_time(server)}"


_PREFIX = "imgcls-"
_SERVER_FILE = re.compile(re.escape(_PREFIX) + r"[a-z]+-(\d+)(?:-(\d+))?")  # releases before 2026-12-05: no time


def _start_time(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot; /proc/PID/stat field 22); 0 where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def remove_stale_server_files() -> int:
    """Remove this user's server files (:func:`server_file`) whose server is gone, or is another process with
    the same pid now; returns how many. A server stopped or killed leaves its files behind: each worker that
    starts clears those of earlier servers."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        match = _SERVER_FILE.fullmatch(path.name)
        if match is None:
            continue
        pid, started = int(match[1]), match[2] and int(match[2])
        try:
            if path.stat().st_uid != os.getuid() or (_alive(pid) and started in (None, _start_time(pid))):
                continue
            path.unlink()
            removed += 1
        except OSError:  # removed meanwhile by another server's worker
            continue
    return removed


def shared_slots(path: Path) -> memoryview:
    """:data:`SLOTS` int64 slots mapped from ``path`` (created with zeros); every process mapping it sees the
    others' writes. Each worker writes only its own slot (its index)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < 8 * SLOTS:
            os.ftruncate(fd, 8 * SLOTS)
        return memoryview(mmap.mmap(fd, 8 * SLOTS)).cast("q")
    finally:
        os.close(fd)


class ServingWorkers:
    """Which workers of this server serve a model: a slot per worker holding its pid while it has one.

    Outside a BentoML worker (``index`` None) or with one worker there is nothing to share: :meth:`all_serving`
    is then this worker's own state."""

    def __init__(self, path: Path, index: int | None, workers: int) -> None:
        self.index, self.workers, self.mine = index, workers, False
        self.slots = shared_slots(path) if index is not None and 1 < workers < SLOTS else None
        self.mark(False)  # a restarted worker starts without a model

    def mark(self, serving: bool) -> None:
        self.mine = serving
        if self.slots is not None:
            self.slots[self.index] = os.getpid() if serving else 0

    def all_serving(self) -> bool:
        if not self.mine or self.slots is None:
            return self.mine
        return all(self.slots[i] and _alive(self.slots[i]) for i in range(1, self.workers + 1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or someone else's process: not one of our workers
        return False
    return True
