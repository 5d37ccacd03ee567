"""Zero-downtime model swaps on a running server: promotions, authenticated reloads, refused broken versions."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx

from imgcls.registry import Registry, write_atomic
from tests.conftest import metric, needs_data, photos, run_cli, serve

pytestmark = needs_data


def copy_version(src: Path, registry: Path, name: str, tamper: bool = False) -> str:
    """A copy of a real version under a new name (metadata.json is not checksummed; the ONNX file is)."""
    dst = registry / "models" / name
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["version"] = name
    (dst / "metadata.json").chmod(0o644)
    (dst / "metadata.json").write_text(json.dumps(meta))
    if tamper:
        (dst / "model.onnx").chmod(0o644)
        with open(dst / "model.onnx", "r+b") as f:
            f.seek(-64, 2)
            f.write(b"\0" * 64)
    return name


def client_loop(url: str, stop: threading.Event, seen: list, data: bytes) -> None:
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            r = c.post(f"{url}/classify", files={"image": data})
            seen.append((r.status_code, r.json().get("model", {}).get("version"), r.json().get("label"),
                         time.monotonic()))


def test_promotion_swaps_models_under_load_without_a_failed_request(trained: Path, tmp_path: Path) -> None:
    src = Registry(trained).resolve("current")
    reg = tmp_path / "registry"
    old, new = copy_version(src, reg, "v1-old"), copy_version(src, reg, "v2-new")
    broken = copy_version(src, reg, "v3-broken", tamper=True)
    run_cli("promote", old, artifacts=reg)
    data = photos("dog", 1)[0].read_bytes()
    with serve(reg, tmp_path / "server.log", MODEL_POLL_S="0.3") as url:
        stop, threads = threading.Event(), []
        seen: list[list] = [[] for _ in range(4)]
        for s in seen:
            threads.append(threading.Thread(target=client_loop, args=(url, stop, s, data)))
            threads[-1].start()
        time.sleep(2)
        run_cli("promote", new, artifacts=reg)
        deadline = time.monotonic() + 30
        while not all(s and s[-1][1] == new for s in seen):
            assert time.monotonic() < deadline, "the new version was never served"
            time.sleep(0.2)
        time.sleep(1)
        # A broken version gets promoted behind the registry's back (promote itself refuses bad checksums):
        write_atomic(reg / "current", broken + "\n")
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        text = httpx.get(f"{url}/metrics").text
        info = httpx.get(f"{url}/model").json()
    for s in seen:
        assert all(status == 200 and label == "dog" for status, _, label, _ in s), s[:5]
        assert s[0][1] == old and {v for _, v, _, _ in s} == {old, new}
    # Each worker swaps on its own poll (MODEL_POLL_S): old and new answer side by side only for a moment.
    answers = [a for s in seen for a in s]
    first_new = min(t for _, v, _, t in answers if v == new)
    last_old = max(t for _, v, _, t in answers if v == old)
    assert last_old - first_new < 5, f"two versions answered side by side for {last_old - first_new:.1f} s"
    assert info["version"] == new
    workers = int(info["runtime"]["config"]["workers"])
    assert metric(text, "imgcls_model_reload_failures_total", version=broken) == workers  # each worker refused it
    assert metric(text, "imgcls_model_info", version=new) == 1 and metric(text, "imgcls_model_info", version=old) == 0
    assert f"refused model {broken}" in (tmp_path / "server.log").read_text()


def test_admin_reload_swaps_when_polling_is_off(trained: Path, tmp_path: Path) -> None:
    src = Registry(trained).resolve("current")
    reg = tmp_path / "registry"
    old, new = copy_version(src, reg, "a-old"), copy_version(src, reg, "b-new")
    run_cli("promote", old, artifacts=reg)
    with serve(reg, tmp_path / "server.log", MODEL_POLL_S="0", ADMIN_TOKEN="s3cret") as url:
        run_cli("promote", new, artifacts=reg)
        time.sleep(1)
        assert httpx.get(f"{url}/model").json()["version"] == old  # nothing polls
        r = httpx.post(f"{url}/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json() == {"version": new, "previous": old, "changed": True}
        # The worker that took the reload has swapped; it tells the others, which swap within a second or two.
        data, deadline, versions = photos("cat", 1)[0].read_bytes(), time.monotonic() + 10, []
        while versions[-10:] != [new] * 10:  # new connections: any worker may answer each
            assert time.monotonic() < deadline, f"some worker still serves the old version: {versions[-10:]}"
            versions.append(httpx.post(f"{url}/classify", files={"image": data}).json()["model"]["version"])
