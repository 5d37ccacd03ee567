"""The running service never serves a broken model: the NaN version forced into ``current`` is refused at the
swap (zero failed requests), and a server whose only model is broken stays unready and answers JSON.

Needs the service's swap to call ``imgcls.reference.check_reference`` on the loaded model before swapping it in.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from imgcls.registry import Registry, write_atomic
from tests.conftest import serve
from tests.tiny_model import add_tiny_version, make_nan_version


def png() -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def test_the_nan_version_forced_into_current_is_refused_with_zero_failed_requests(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "artifacts")
    good = add_tiny_version(reg, promote=True)
    nan = make_nan_version(reg, good)
    body, answers, stop = png(), [], threading.Event()
    with serve(reg.root, tmp_path / "server.log", MODEL_POLL_S="0.2") as url:
        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/classify", content=body, headers={"Content-Type": "image/png"})
                    ok = r.status_code == 200
                    answers.append((r.status_code, r.json()["model"]["version"] if ok else r.text[:100]))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1)
        write_atomic(reg.pointer, nan + "\n")  # behind promote's back, as an operator or a bug could
        time.sleep(3)  # many polls of the model watcher
        stop.set()
        for t in threads:
            t.join()
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/model").json()["version"] == good
    assert answers and set(answers) == {(200, good)}, {a for a in answers if a != (200, good)}
    assert nan in (tmp_path / "server.log").read_text()  # the refusal is logged


def test_a_server_whose_only_model_is_broken_stays_unready_and_answers_json(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "artifacts")
    good = add_tiny_version(reg)
    write_atomic(reg.pointer, make_nan_version(reg, good) + "\n")
    with serve(reg.root, tmp_path / "server.log", ready=False) as url:
        assert httpx.get(f"{url}/readyz").status_code == 503
        r = httpx.post(f"{url}/classify", content=png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and r.json()["error"] in ("no_model", "model_error")
