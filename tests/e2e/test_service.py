"""The real BentoML server on a free port, the real ONNX model, real photos: answers, errors, metrics, batching."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from imgcls.registry import Registry
from service.config import Config
from tests.conftest import PY, ROOT, child_env, metric, needs_data, photos, run_cli, serve
from tests.live_server import free_port
from tests.live_server import server_process as start_server

pytestmark = needs_data
TOKEN = "test-admin-token"
FEEDBACK_TOKEN = "test-feedback-token"


FEEDBACK: dict[str, Path] = {}
LOG: dict[str, Path] = {}


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory) -> str:
    LOG["server"] = tmp_path_factory.mktemp("server") / "server.log"
    FEEDBACK["dir"] = tmp_path_factory.mktemp("feedback")
    with serve(trained, LOG["server"], ADMIN_TOKEN=TOKEN, FEEDBACK_DIR=str(FEEDBACK["dir"]),
               FEEDBACK_TOKEN=FEEDBACK_TOKEN) as url:
        yield url


def test_classifies_real_photos(server: str) -> None:
    cases = [(p, "cat") for p in photos("cat", 100)] + [(p, "dog") for p in photos("dog", 100)]

    def classify(case: tuple[Path, str]) -> bool:
        r = httpx.post(f"{server}/classify", files={"image": case[0].read_bytes()}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["label"] == case[1]

    with ThreadPoolExecutor(8) as pool:
        correct = sum(pool.map(classify, cases))
    assert correct >= 0.98 * len(cases), f"{correct}/{len(cases)}"


def test_answer_shape_raw_body_and_top_k(server: str) -> None:
    data = photos("dog", 1)[0].read_bytes()
    full = httpx.post(f"{server}/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
    assert full["label"] == "dog" and full["score"] == full["probabilities"][0]["score"]
    assert [p["label"] for p in full["probabilities"]] == ["dog", "cat"]
    assert sum(p["score"] for p in full["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert full["model"]["name"] == "efficientnet_lite0" and full["model"]["version"]
    top1 = httpx.post(f"{server}/classify?k=1", files={"image": data}).json()
    assert len(top1["probabilities"]) == 1 and top1["label"] == "dog"


def big_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(("kwargs", "status", "reason"), [
    ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty"),
    ({"files": {"image": b"this is text, not an image"}}, 415, "not_an_image"),
    ({"content": b"\xff\xd8\xff\xe0" + b"\x00" * 100, "headers": {"Content-Type": "image/jpeg"}}, 422, "corrupt"),
    ({"content": b'{"image": "cat.jpg"}', "headers": {"Content-Type": "application/json"}}, 415,
     "unsupported_media_type"),
    ({"files": {"other": ("x.jpg", b"")}, "data": {"k": "1"}}, 400, "empty"),
    ({"data": {"k": "1"}}, 415, "unsupported_media_type"),
    ({"content": b"\x00" * (10 * 1024 * 1024 + 1), "headers": {"Content-Type": "image/jpeg"}}, 413,
     "body_too_large"),
])
def test_bad_input_gets_4xx_with_a_json_reason(server: str, kwargs: dict, status: int, reason: str) -> None:
    r = httpx.post(f"{server}/classify", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason and r.json()["detail"]


def test_truncated_photo_decompression_bomb_bad_k_and_too_many_images(server: str) -> None:
    data = photos("cat", 1)[0].read_bytes()
    r = httpx.post(f"{server}/classify", files={"image": data[: len(data) // 2]})
    assert (r.status_code, r.json()["error"]) == (422, "corrupt")
    r = httpx.post(f"{server}/classify", files={"image": big_png(8000)})  # 64 Mpx in a few KB
    assert (r.status_code, r.json()["error"]) == (413, "too_many_pixels")
    r = httpx.post(f"{server}/classify?k=7", files={"image": data})
    assert (r.status_code, r.json()["error"]) == (400, "bad_parameter")
    r = httpx.post(f"{server}/classify_batch", files=[("images", data)] * 65, timeout=60)
    assert (r.status_code, r.json()["error"]) == (413, "too_many_images")


@pytest.fixture(scope="module")
def one_worker(trained: Path, tmp_path_factory) -> str:
    """The server with one worker: the refusal throttle counts per worker (docs/operations.md). Its own
    BENTOML_HOME: BentoML empties the Prometheus folder there when a server starts, which would wipe the metrics of
    the module's other server, running meanwhile."""
    tmp = tmp_path_factory.mktemp("one-worker")
    with serve(trained, tmp / "server.log", WORKERS="1", BENTOML_HOME=str(tmp / "bentoml")) as url:
        yield url


def test_a_client_looping_bombs_is_slowed_and_others_are_not(one_worker: str) -> None:
    """The refusal throttle at its default settings, wired into the real server (one worker): a client at 127.0.0.2
    sends its burst and 20 more bombs at once; its last refusals wait, while valid and bad requests from 127.0.0.1
    meanwhile are answered at once."""
    server = one_worker
    defaults = Config.from_env()  # the server runs with the defaults too
    n, late = defaults.refusal_burst + 20, 20 / defaults.refusal_rate
    bomb = big_png(8000)

    def post(client: httpx.Client, content: bytes) -> tuple[int, float]:
        t = time.perf_counter()
        r = client.post(f"{server}/classify", content=content, headers={"Content-Type": "image/png"}, timeout=60)
        return r.status_code, time.perf_counter() - t

    held = metric(httpx.get(f"{server}/metrics").text, "imgcls_refusals_held_total")
    abuser = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"),
                          limits=httpx.Limits(max_connections=n))
    with abuser, httpx.Client() as other, ThreadPoolExecutor(n) as pool:
        looping = pool.map(lambda _: post(abuser, bomb), range(n))
        time.sleep(late / 4)
        mine = [post(other, photos("dog", 1)[0].read_bytes()), post(other, bomb)]
        looping = list(looping)
    assert {status for status, _ in looping} == {413} and [s for s, _ in mine] == [200, 413]
    assert max(seconds for _, seconds in looping) >= 0.9 * late  # 20 past the burst, 1 / rate apart
    assert max(seconds for _, seconds in mine) < late / 2
    assert metric(httpx.get(f"{server}/metrics").text, "imgcls_refusals_held_total") > held


def test_classify_batch_keeps_order_and_isolates_bad_images(server: str) -> None:
    cat, dog = photos("cat", 1)[0], photos("dog", 1)[0]
    files = [("images", ("a.jpg", cat.read_bytes())), ("images", ("bad.jpg", b"nope")),
             ("images", ("b.jpg", dog.read_bytes()))]
    r = httpx.post(f"{server}/classify_batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["result"] or {}).get("label") for x in results] == ["cat", None, "dog"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert (results[1]["error"], results[1]["status"]) == ("not_an_image", 415)


def test_64_concurrent_requests_succeed_in_batches_larger_than_one(server: str) -> None:
    before = httpx.get(f"{server}/metrics").text
    images = [p.read_bytes() for p in photos("cat", 32) + photos("dog", 32)]
    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda d: httpx.post(f"{server}/classify", files={"image": d},
                                                      timeout=120).status_code, images))
    assert statuses == [200] * 64
    after = httpx.get(f"{server}/metrics").text
    batches = metric(after, "imgcls_model_batch_size_count") - metric(before, "imgcls_model_batch_size_count")
    singles = (metric(after, "imgcls_model_batch_size_bucket", le="1.0")
               - metric(before, "imgcls_model_batch_size_bucket", le="1.0"))
    images_seen = metric(after, "imgcls_model_batch_size_sum") - metric(before, "imgcls_model_batch_size_sum")
    assert images_seen == 64 and batches < 64 and singles < batches, (batches, singles)


def test_metrics_name_labels_reasons_and_model_version(server: str) -> None:
    httpx.post(f"{server}/classify", files={"image": b"not an image"})
    text = httpx.get(f"{server}/metrics").text
    version = httpx.get(f"{server}/model").json()["version"]
    assert metric(text, "imgcls_predictions_total", label="cat") > 0
    assert metric(text, "imgcls_rejected_inputs_total", reason="not_an_image") >= 1
    assert metric(text, "imgcls_model_info", version=version) == 1
    assert metric(text, "imgcls_decode_seconds_count") > 0 and metric(text, "imgcls_inference_seconds_count") > 0
    assert metric(text, "imgcls_http_requests_total", endpoint="/classify", status="415") >= 1


def test_unknown_paths_share_one_metric_label_and_get_json_404_405(server: str) -> None:
    for i in range(20):
        r = httpx.get(f"{server}/no/such/path-{i}")
        assert r.status_code == 404 and r.json()["error"] == "not_found" and r.json()["detail"]
    r = httpx.get(f"{server}/classify")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    text = httpx.get(f"{server}/metrics").text
    assert "path-1" not in text and metric(text, "imgcls_http_requests_total", endpoint="other") >= 20
    series = len([l for l in text.splitlines() if l and not l.startswith("#")])
    for i in range(20, 40):
        httpx.get(f"{server}/other/path-{i}")
    assert len([l for l in httpx.get(f"{server}/metrics").text.splitlines() if l and not l.startswith("#")]) == series


def test_request_id_is_echoed_and_every_log_line_is_json(server: str) -> None:
    r = httpx.post(f"{server}/classify", files={"image": photos("cat", 1)[0].read_bytes()},
                   headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{server}/model").headers["x-request-id"]
    assert len(made) == 32 and made != "trace-42"
    time.sleep(0.5)
    lines = [json.loads(l) for l in LOG["server"].read_text().splitlines()[1:] if l.strip()]  # line 1: BentoML's CLI
    access = [l for l in lines if l.get("logger") == "imgcls.access" and l.get("request_id") == "trace-42"]
    assert access and access[0]["path"] == "/classify" and access[0]["status"] == 200


def test_bentoml_client_and_openapi_describe_every_upload(server: str, tmp_path: Path) -> None:
    cat = photos("cat", 1)[0]
    with bentoml.SyncHTTPClient(server) as client:
        answer = client.classify(image=cat)
        assert answer["label"] == "cat" and answer["model"]["version"]
        batch = client.classify_batch(images=[cat, photos("dog", 1)[0]])
        assert [x["result"]["label"] for x in batch["results"]] == ["cat", "dog"]
        png = client.explain(image=cat)
        assert Image.open(png).size == (224, 224)
        with pytest.raises(bentoml.exceptions.BentoMLException, match="not_an_image"):
            client.classify(image=Path(__file__))
    spec = httpx.get(f"{server}/docs.json").json()
    for route, field in (("/classify", "image"), ("/classify_batch", "images"), ("/explain", "image"),
                         ("/feedback", "image")):
        body = spec["paths"][route]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert field in body["required"], route
    assert "k" in spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]
    assert "image/png" in spec["paths"]["/explain"]["post"]["responses"]["200"]["content"]
    assert httpx.get(f"{server}/").status_code == 200 and httpx.get(f"{server}/docs").status_code == 404


def test_model_endpoint_reports_metadata_and_real_providers(server: str) -> None:
    info = httpx.get(f"{server}/model").json()
    assert info["labels"] == ["cat", "dog"] and info["metrics"]["test"]["accuracy"] > 0.9
    assert info["runtime"]["providers"] == ["CPUExecutionProvider"] and info["runtime"]["device"] == "cpu"
    assert "admin_token" not in info["runtime"]["config"] and "history" not in info


def test_explain_heatmaps_point_at_the_animal(server: str) -> None:
    hottest = {}
    for label in ("cat", "dog"):
        data = photos(label, 1)[0].read_bytes()
        png = httpx.post(f"{server}/explain", files={"image": data}, timeout=60)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (224, 224) and png.headers["x-label"] == label
        raw = httpx.post(f"{server}/explain?format=json", files={"image": data}, timeout=60).json()
        cam = np.asarray(raw["cam"])
        assert cam.shape == (7, 7) and cam.max() == pytest.approx(1) and cam.min() == pytest.approx(0)
        hottest[label] = np.unravel_index(cam.argmax(), cam.shape)
    assert hottest["cat"] != hottest["dog"]


def test_feedback_is_stored_once_with_checked_labels(server: str) -> None:
    data = photos("cat", 2)[0].read_bytes()
    auth = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
    assert httpx.post(f"{server}/feedback", files={"image": data}, data={"label": "cat"}).status_code == 401
    first = httpx.post(f"{server}/feedback", files={"image": data}, data={"label": "cat"}, headers=auth)
    assert first.status_code == 201, first.text
    stored = next((FEEDBACK["dir"] / "cat").glob(f"{first.json()['sha256']}.*"))
    assert not first.json()["duplicate"] and Image.open(stored).size == Image.open(io.BytesIO(data)).size
    again = httpx.post(f"{server}/feedback", files={"image": data}, data={"label": "cat"}, headers=auth)
    assert again.json()["duplicate"] and len(list(stored.parent.iterdir())) == 1
    assert httpx.post(f"{server}/feedback", files={"image": data}, data={"label": "dog"}, headers=auth
                      ).status_code == 409
    assert httpx.post(f"{server}/feedback", files={"image": data}, data={"label": "horse"}, headers=auth
                      ).status_code == 422
    assert httpx.post(f"{server}/feedback", files={"image": data}, headers=auth).status_code == 400
    assert httpx.post(f"{server}/feedback", files={"image": b"text"}, data={"label": "dog"}, headers=auth
                      ).status_code == 415


def test_admin_reload_needs_the_token(server: str) -> None:
    assert httpx.post(f"{server}/admin/reload").status_code == 401
    assert httpx.post(f"{server}/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{server}/admin/reload", headers={"Authorization": TOKEN}).status_code == 401  # no "Bearer "
    r = httpx.post(f"{server}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["changed"] is False


def test_not_ready_until_a_model_is_promoted(trained: Path, tmp_path: Path) -> None:
    empty = tmp_path / "registry"
    with serve(empty, tmp_path / "server.log", ready=False, MODEL_POLL_S="0.5") as url:
        assert httpx.get(f"{url}/livez").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503
        r = httpx.post(f"{url}/classify", files={"image": photos("cat", 1)[0].read_bytes()})
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "no_model", "5")
        version = Registry(trained).current()
        shutil.copytree(trained / "models" / version, empty / "models" / version)
        run_cli("promote", version, artifacts=empty)
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)
        r = httpx.post(f"{url}/classify", files={"image": photos("cat", 1)[0].read_bytes()})
        assert r.status_code == 200 and r.json()["model"]["version"] == version


@pytest.mark.slow
def test_built_bento_serves_a_real_photo_and_packs_no_photo(trained: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    for name in ("imgcls", "service"):
        shutil.copytree(ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bentofile.yaml", ctx)
    shutil.copytree(trained, ctx / "artifacts", ignore=shutil.ignore_patterns("cache"))
    shutil.copy(photos("cat", 1)[0], ctx / "artifacts" / "stray.jpg")  # must be excluded from the Bento
    home = tmp_path / "bentoml"
    env = child_env(BENTOML_HOME=str(home))
    out = subprocess.run([PY, "-m", "bentoml", "build", str(ctx), "--output", "tag"], cwd=ctx, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = next((home / "bentos" / "image_classifier").glob("*/src"))
    files = {p.relative_to(bento).as_posix() for p in bento.rglob("*") if p.is_file()}
    version = Registry(trained).current()
    assert {"service/service.py", "service/static/demo.html", "imgcls/onnx_model.py", "artifacts/current",
            f"artifacts/models/{version}/model.onnx", f"artifacts/models/{version}/metadata.json"} <= files
    assert not [f for f in files if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    assert not [f for f in files if "/cache/" in f or "/report/" in f or f.startswith("tests/")]
    port = free_port()
    cmd = [PY, "-m", "cli", "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    with start_server(cmd, port, env={**env, "BENTOML_DISABLE_GPU_ALLOCATION": "1"},
                      log=tmp_path / "bento.log", timeout=120) as url:
        r = httpx.post(f"{url}/classify", files={"image": photos("dog", 1)[0].read_bytes()}, timeout=60)
        assert r.status_code == 200 and r.json()["label"] == "dog" and r.json()["model"]["version"] == version


def test_compose_file_is_valid() -> None:
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose (Debian's v1 package) is not installed; .ci/run installs it")
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                                           capture_output=True, text=True).stdout)
    app = config["services"]["classifier"]
    assert "/readyz" in " ".join(app["healthcheck"]["test"]) and app["user"] != "root"
    assert app["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "classifier:3000" in (ROOT / "deploy" / "prometheus.yml").read_text()
