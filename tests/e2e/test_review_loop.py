"""The retraining loop as the README tells it, on real photos, a real server and a real browser:

serve with a review queue, send photos, label them on /review in headless Chromium (keyboard and mouse), retrain,
see the candidate promoted or refused with its reasons, and the service swap a promoted one in. Also: a real
Prometheus scrapes the service and sees the drift series, and the queue stays within its limits while two replicas
sharing one directory are under load.

The base model is deliberately weak (8 photos per class, 3 epochs, no augmentation: it gets many photos wrong), so
that the reviewed photos teach it something; it is trained once for the module by the real CLI.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgcls.filelock import exclusive
from imgcls.registry import Registry
from imgcls.review import ReviewQueue, read_decisions
from tests.conftest import DATA, ROOT, needs_data, run_cli, serve
from tests.live_server import free_port

pytestmark = needs_data
CLASSES = ("cat", "dog")
N_TRAIN, N_TEST, N_NEW, N_SENT = 8, 40, 20, 6  # per class
TOKEN = "e2e-review-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMETHEUS = shutil.which("prometheus")
OPEN_SET = DATA.parent / "open-set" / "other"


def _photos(split: str, label: str) -> list[Path]:
    return sorted((DATA / split / label).glob("*.jpg"))


def _link(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Symlinked data folders (the photos stay where they are) and a registry whose current model is the weak base."""
    root = tmp_path_factory.mktemp("review-loop")
    for c in CLASSES:
        _link(_photos("train", c)[:N_TRAIN], root / "orig" / "train" / c)
        _link(_photos("val", c)[:N_TRAIN], root / "orig" / "val" / c)
        _link(_photos("test", c)[:N_TEST], root / "orig" / "test" / c)
        _link(_photos("train", c)[N_TRAIN:N_TRAIN + N_NEW], root / "new" / c)
    run_cli("train", "--data", str(root / "orig"), "--aug-views", "0", "--epochs", "3", artifacts=root / "base")
    return {"root": root, "orig": root / "orig", "new": root / "new", "base": root / "base"}


def _registry_copy(world: dict[str, Path], name: str) -> Path:
    art = world["root"] / name
    shutil.copytree(world["base"], art, ignore=shutil.ignore_patterns("cache"), symlinks=True)
    (art / "cache").symlink_to(world["base"] / "cache", target_is_directory=True)
    return art


def _require(what: str, present: bool, env: str) -> None:
    if not present:
        (pytest.fail if os.environ.get(env) else pytest.skip)(f"{what} is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require(f"Chromium at {CHROMIUM}", Path(CHROMIUM).is_file(), "REQUIRE_BROWSER")
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _wait_queued(url: str, n: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        items = httpx.get(f"{url}/review/items", headers=AUTH, timeout=30).json()["items"]
        if len(items) >= n:
            return items
        assert time.monotonic() < deadline, f"{len(items)} of {n} photos queued"
        time.sleep(0.2)


def review_in_browser(browser, url: str, truth: list[str]) -> list[str]:
    """Label the queued photos on /review: the even ones with the keyboard (Enter confirms a right answer, a digit
    picks the class), the odd ones with the mouse; the last one is marked unusable. Returns the ids decided."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{url}/review")
    page.fill("#token", "wrong")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("error")).to_contain_text("REVIEW_TOKEN")
    page.fill("#token", TOKEN)
    page.keyboard.press("Enter")
    items = httpx.get(f"{url}/review/items", headers=AUTH, timeout=30).json()["items"]
    labels = httpx.get(f"{url}/model", timeout=30).json()["labels"]
    decided = []
    for i, item in enumerate(items):
        expect(page.get_by_test_id("meta")).to_contain_text(item["id"], timeout=30_000)
        expect(page.get_by_test_id("answer")).to_contain_text(item["label"])
        page.wait_for_function("() => ['photo', 'cam'].every(id => { const i = document.getElementById(id);"
                               " return i.complete && i.naturalWidth > 0; })", timeout=60_000)
        if i == len(items) - 1:
            page.get_by_test_id("unusable").click()
        elif i % 2 == 0 and item["label"] == truth[i] and item["known"] is not False:
            page.keyboard.press("Enter")  # confirms the model's answer
        elif i % 2 == 0:
            page.keyboard.press(str(labels.index(truth[i]) + 1))
        else:
            page.get_by_test_id(f"label-{truth[i]}").click()
        decided.append(item["id"])
    expect(page.get_by_test_id("done")).to_contain_text("empty", timeout=30_000)
    page.close()
    assert not errors, errors
    assert all(u.startswith(url) or u.startswith(("blob:", "data:")) for u in requests), requests
    return decided


def test_serve_review_retrain_and_the_service_swaps_the_candidate_in(world, browser, tmp_path: Path) -> None:
    art = _registry_copy(world, "loop")
    reg = Registry(art)
    base = reg.current()
    feedback, queue = art / "feedback", tmp_path / "queue"
    sent = [(c, p) for i in range(N_SENT) for c in CLASSES for p in [_photos("train", c)[N_TRAIN + N_NEW + i]]]
    with serve(art, tmp_path / "server.log", REVIEW_DIR=str(queue), REVIEW_TOKEN=TOKEN, REVIEW_SAMPLE="1",
               FEEDBACK_DIR=str(feedback), MODEL_POLL_S="0.5") as url:
        answers = []
        for _, photo in sent:  # one at a time: the queue keeps them in this order
            r = httpx.post(f"{url}/classify", files={"image": photo.read_bytes()}, timeout=60)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        items = _wait_queued(url, len(sent))
        assert [i["label"] for i in items] == [a["label"] for a in answers]
        wrong = sum(a["label"] != c for a, (c, _) in zip(answers, sent))
        print(f"the base answered {wrong} of {len(sent)} photos wrongly")
        decided = review_in_browser(browser, url, [c for c, _ in sent])
        assert decided == [i["id"] for i in items]
        assert httpx.get(f"{url}/review/items", headers=AUTH, timeout=30).json()["count"] == 0
        decisions = read_decisions(feedback)
        assert [(d.verdict, d.label) for d in decisions] == [
            *(("label", c) for c, _ in sent[:-1]), ("unusable", None)]
        assert len(list(feedback.glob("*/*.jpg"))) == len(sent) - 1

        out = run_cli("retrain", "--data", str(world["new"]), "--feedback", str(feedback), artifacts=art).stdout
        (folder,) = (art / "retrain").iterdir()
        report = json.loads((folder / "report.json").read_text())
        reviewed, decision, candidate = report["reviewed"], report["decision"], report["candidate"]["version"]
        print(report["summary"])
        assert reviewed["n"] == len(sent) - 1 and report["data"]["feedback"]["used"] == len(sent) - 1
        assert reviewed["answered_wrong_when_served"] == sum(a["label"] != c for a, (c, _) in
                                                             zip(answers[:-1], sent[:-1]))
        assert 0 <= reviewed["candidate_right_of_base_wrong"] <= reviewed["base_wrong"] <= reviewed["n"]
        assert "accuracy" in decision["reason"] and candidate in out
        assert "Reviewed photos" in (folder / "report.md").read_text()
        expected = candidate if decision["promote"] else base
        assert reg.current() == expected and report["status"] == ("promoted" if decision["promote"] else "rejected")
        deadline = time.monotonic() + 30
        while (served := httpx.get(f"{url}/model", timeout=30).json()["version"]) != expected:
            assert time.monotonic() < deadline, f"the service still serves {served}, not {expected}"
            time.sleep(0.3)
        r = httpx.post(f"{url}/classify", files={"image": sent[0][1].read_bytes()}, timeout=60)
        assert r.status_code == 200 and r.json()["model"]["version"] == expected


def _prometheus_query(prom: str, query: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": query}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def test_a_real_prometheus_scrapes_the_drift_series_and_loads_the_alert_rules(world, tmp_path: Path) -> None:
    _require("Prometheus", PROMETHEUS is not None, "REQUIRE_PROMETHEUS")
    art = _registry_copy(world, "scraped")
    with serve(art, tmp_path / "server.log") as url:
        photos = [p for c in CLASSES for p in _photos("test", c)[-4:]] + sorted(OPEN_SET.glob("*.jpg"))[:4]
        for p in photos:
            assert httpx.post(f"{url}/classify", files={"image": p.read_bytes()}, timeout=60).status_code == 200
        version = httpx.get(f"{url}/model", timeout=30).json()["version"]
        shutil.copy(ROOT / "deploy" / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yml]\n"
            f"scrape_configs:\n  - job_name: image_classifier\n    static_configs:\n"
            f"      - targets: ['{url.removeprefix('http://')}']\n")
        port = free_port()
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline, counts = time.monotonic() + 90, None
            while True:
                try:
                    counts = _prometheus_query(base, f'imgcls_score_count{{version="{version}"}}')
                    if counts and float(counts[0]["value"][1]) == len(photos):
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    targets = httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
                    raise AssertionError(f"Prometheus saw {counts}; targets {targets}")
                time.sleep(0.5)
            for series in ("imgcls_novelty_count", "imgcls_unknown_total", "imgcls_low_confidence_total"):
                found = _prometheus_query(base, f'{series}{{version="{version}"}}')
                assert found, f"Prometheus has no {series} for {version}"
            buckets = _prometheus_query(base, f'imgcls_score_bucket{{version="{version}",le="+Inf"}}')
            assert float(buckets[0]["value"][1]) == len(photos)
            rules = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
            names = {r["name"]: r["health"] for g in rules for r in g["rules"]}
            assert set(names) == {"ImgclsUnknownShareHigh", "ImgclsLowConfidenceShareHigh", "ImgclsScoreMedianLow"}
            deadline = time.monotonic() + 20
            while not all(h == "ok" for h in names.values()):  # evaluated without error
                assert time.monotonic() < deadline, names
                time.sleep(0.5)
                rules = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
                names = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        finally:
            prom.terminate()
            prom.wait(20)


def test_two_replicas_under_load_keep_the_shared_queue_within_its_limits(world, tmp_path: Path) -> None:
    art = _registry_copy(world, "load")
    queue_dir, max_items, max_bytes = tmp_path / "queue", 12, 400_000
    limits = dict(REVIEW_DIR=str(queue_dir), REVIEW_TOKEN=TOKEN, REVIEW_SAMPLE="1", REVIEW_MAX_ITEMS=str(max_items),
                  REVIEW_MAX_BYTES=str(max_bytes))
    photos = [p.read_bytes() for c in CLASSES for p in _photos("train", c)[100:116]]
    with serve(art, tmp_path / "a.log", **limits) as a, serve(art, tmp_path / "b.log", **limits) as b:
        queue = ReviewQueue(queue_dir, max_bytes=max_bytes, max_items=max_items)
        stop, seen, statuses = threading.Event(), [], []

        def client(url: str, offset: int) -> None:
            with httpx.Client(timeout=60) as c:
                i = offset
                while not stop.is_set():
                    statuses.append(c.post(f"{url}/classify", files={"image": photos[i % len(photos)]}).status_code)
                    i += 1

        threads = [threading.Thread(target=client, args=(u, k)) for k, u in enumerate([a, b] * 4)]
        for t in threads:
            t.start()
        end = time.monotonic() + 8
        while time.monotonic() < end:
            with exclusive(queue.lock_file):  # a consistent view: admissions happen under this lock
                seen.append(queue.usage())
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        queued = [line for u in (a, b) for line in httpx.get(f"{u}/metrics", timeout=30).text.splitlines()
                  if line.startswith("imgcls_review_queued_total")]
    print(f"{len(statuses)} requests; queue usage peaked at {max(seen)}; {queued}")
    assert set(statuses) == {200} and len(statuses) > 2 * max_items
    assert max(n for n, _ in seen) <= max_items and max(s for _, s in seen) <= max_bytes
    assert max(n for n, _ in seen) == max_items  # the limit was reached, and held
    for item_id in queue.ids():
        assert queue.get(item_id) is not None and queue.image(item_id)[:2] == b"\xff\xd8"
