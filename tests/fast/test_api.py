"""Every endpoint and every error of the HTTP API, in process: BentoML's own ASGI app under Starlette's test client,
on the tiny model. No photos, no network, no server."""
from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from tests import synthetic

TOKEN = "fast-admin-token"
FEEDBACK_TOKEN = "fast-feedback-token"
AUTH = {"authorization": f"Bearer {FEEDBACK_TOKEN}"}
SETTINGS = {"MODEL_POLL_S": "0", "ADMIN_TOKEN": TOKEN, "FEEDBACK_TOKEN": FEEDBACK_TOKEN, "FEEDBACK_BURST": "6",
            "MAX_BODY_BYTES": str(2_000_000), "MAX_BATCH_IMAGES": "4",
            "REFUSAL_BURST": "1000",  # the throttle stays wired, but these tests send many bad requests
            "BENTOML_DO_NOT_TRACK": "true"}


@pytest.fixture(scope="module")
def api(tiny_registry: Path, tmp_path_factory):
    """The service's ASGI app on ``tiny_registry``; settings are read from the environment when the app is built."""
    feedback = tmp_path_factory.mktemp("feedback")
    mp = pytest.MonkeyPatch()
    for k, v in {**SETTINGS, "ARTIFACTS_DIR": str(tiny_registry), "FEEDBACK_DIR": str(feedback)}.items():
        mp.setenv(k, v)
    from service.service import ImageClassifier

    with TestClient(ImageClassifier.to_asgi(), raise_server_exceptions=False) as client:
        client.feedback_dir = feedback
        yield client
    mp.undo()


def jpeg(label: str, seed: int = 0) -> bytes:
    return synthetic.image_bytes(label, 50_000 + seed)


def up(data: bytes, name: str = "x.jpg", ctype: str = "image/jpeg") -> dict:
    return {"image": (name, data, ctype)}


def assert_error(r, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == reason and isinstance(body["detail"], str) and body["detail"], body


def test_classify_multipart_and_raw_body_agree_and_are_right(api) -> None:
    for label in synthetic.CLASSES:
        a = api.post("/classify", files=up(jpeg(label))).json()
        b = api.post("/classify", content=jpeg(label), headers={"content-type": "image/jpeg"}).json()
        assert a == b and a["label"] == label, a
        assert [p["label"] for p in a["probabilities"]][0] == label and len(a["probabilities"]) == 3
        assert sum(p["score"] for p in a["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert a["model"]["name"] == "tiny" and a["model"]["version"] and a["model"]["variant"]


def test_a_costly_image_goes_through_the_slow_lane_with_the_same_answer(api) -> None:
    """An image over COSTLY_PIXELS to decode is decoded and cropped in the API's slow lane, others in the model's
    thread with their batch: the same image, both ways, gets the same answer."""
    from service.api import COSTLY_PIXELS

    small = Image.open(io.BytesIO(jpeg("blue"))).convert("RGB")
    side = int(COSTLY_PIXELS ** 0.5) + 10
    answers = []
    for size in (small.size, (side, side)):
        buf = io.BytesIO()
        small.resize(size, Image.NEAREST).save(buf, "PNG")
        r = api.post("/classify", files=up(buf.getvalue(), "x.png", "image/png"))
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert answers[0]["label"] == answers[1]["label"] == "blue"


def test_top_k_from_query_or_form(api) -> None:
    assert len(api.post("/classify?k=1", files=up(jpeg("red"))).json()["probabilities"]) == 1
    assert len(api.post("/classify", files=up(jpeg("red")), data={"k": "2"}).json()["probabilities"]) == 2
    r = api.post("/classify?k=2", content=jpeg("red"), headers={"content-type": "image/png"})
    assert len(r.json()["probabilities"]) == 2


@pytest.mark.parametrize(("request_kwargs", "status", "reason"), [
    ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty"),
    ({"files": up(b"this is text, not an image", "a.txt", "text/plain")}, 415, "not_an_image"),
    ({"content": b"\xff\xd8\xff\xe0" + b"\x00" * 100, "headers": {"content-type": "image/jpeg"}}, 422, "corrupt"),
    ({"content": b'{"image": "http://127.0.0.1/cat.jpg"}', "headers": {"content-type": "application/json"}}, 415,
     "unsupported_media_type"),
    ({"data": {"image": "http://127.0.0.1/cat.jpg"}}, 415, "unsupported_media_type"),
    ({"files": {"k": (None, "1")}, "data": {"image": "http://127.0.0.1/cat.jpg"}}, 400, "no_image"),
    ({"files": up(b"", "empty.jpg")}, 400, "empty"),
    ({"content": b"\x00" * 2_000_001, "headers": {"content-type": "image/jpeg"}}, 413, "body_too_large"),
    ({"files": up(jpeg("red")), "data": {"k": "abc"}}, 400, "bad_parameter"),
    ({"files": up(jpeg("red")), "data": {"k": "0"}}, 400, "bad_parameter"),
    ({"files": up(jpeg("red")), "data": {"color": "1"}}, 400, "bad_parameter"),
])
def test_bad_requests_get_4xx_json(api, request_kwargs: dict, status: int, reason: str) -> None:
    assert_error(api.post("/classify", **request_kwargs), status, reason)


def test_bad_query_parameters_and_truncated_images(api) -> None:
    assert_error(api.post("/classify?k=9", files=up(jpeg("red"))), 400, "bad_parameter")
    assert_error(api.post("/classify?size=9", files=up(jpeg("red"))), 400, "bad_parameter")
    data = jpeg("green")
    assert_error(api.post("/classify", files=up(data[: len(data) // 2])), 422, "corrupt")
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, "PNG")
    assert_error(api.post("/classify", files=up(bomb.getvalue(), "bomb.png", "image/png")), 413, "too_many_pixels")


def test_classify_batch_keeps_order_isolates_bad_images_and_limits_count(api) -> None:
    files = [("images", ("a.jpg", jpeg("red"), "image/jpeg")), ("images", ("b.txt", b"nope", "text/plain")),
             ("images", ("c.png", synthetic.image_bytes("blue", 7, "PNG"), "image/png"))]
    r = api.post("/classify_batch?k=1", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert [(x["result"] or {}).get("label") for x in results] == ["red", None, "blue"]
    assert (results[1]["error"], results[1]["status"]) == ("not_an_image", 415)
    assert len(results[0]["result"]["probabilities"]) == 1
    assert_error(api.post("/classify_batch", files=[("images", ("a.jpg", jpeg("red"), "image/jpeg"))] * 5), 413,
                 "too_many_images")


def test_explain_png_and_json(api) -> None:
    r = api.post("/explain", files=up(jpeg("green")))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    size = api.get("/model").json()["preprocessing"]["input_size"]
    assert Image.open(io.BytesIO(r.content)).size == (size, size)
    assert r.headers["x-label"] == "green" and float(r.headers["x-score"]) > 0.5 and r.headers["x-model-version"]
    j = api.post("/explain?format=json&label=red", content=jpeg("green"), headers={"content-type": "image/jpeg"})
    cam = np.asarray(j.json()["cam"])
    assert j.json()["label"] == "red" and cam.ndim == 2 and cam.min() == pytest.approx(0) and cam.max() <= 1
    assert_error(api.post("/explain?label=zebra", files=up(jpeg("red"))), 422, "unknown_label")
    assert_error(api.post("/explain?format=gif", files=up(jpeg("red"))), 400, "bad_parameter")


def test_model_get_and_post(api, tiny_registry: Path) -> None:
    got, posted = api.get("/model"), api.post("/model")
    assert got.status_code == posted.status_code == 200
    assert got.json() == posted.json()
    info = got.json()
    assert info["labels"] == list(synthetic.CLASSES)
    assert info["version"] == (tiny_registry / "current").read_text().strip()
    assert info["runtime"]["providers"] == ["CPUExecutionProvider"] and info["runtime"]["device"] == "cpu"
    assert "history" not in info and not any("token" in k for k in info["runtime"]["config"])


def test_feedback_needs_its_token_stores_pixels_once_and_records_conflicts(api) -> None:
    data = jpeg("blue", 3) + b"<html>trailing bytes that must not be stored</html>"
    assert_error(api.post("/feedback", files=up(data), data={"label": "blue"}), 401, "unauthorized")
    assert_error(api.post("/feedback", files=up(data), data={"label": "blue"},
                          headers={"authorization": f"Bearer {TOKEN}"}), 401, "unauthorized")  # the admin's token
    first = api.post("/feedback", files=up(data), data={"label": "blue"}, headers=AUTH)
    assert first.status_code == 201, first.text
    assert not first.json()["duplicate"]
    stored = list((api.feedback_dir / "blue").iterdir())
    assert len(stored) == 1 and b"<html>" not in stored[0].read_bytes()
    again = api.post("/feedback?label=blue", content=data, headers={"content-type": "image/jpeg", **AUTH})
    assert again.status_code == 201 and again.json()["duplicate"]
    assert_error(api.post("/feedback", files=up(data), data={"label": "red"}, headers=AUTH), 409, "label_conflict")
    assert not (api.feedback_dir / "red").exists()
    assert_error(api.post("/feedback", files=up(data), data={"label": "horse"}, headers=AUTH), 422, "unknown_label")
    assert_error(api.post("/feedback", files=up(data), headers=AUTH), 400, "bad_parameter")
    assert_error(api.post("/feedback", files=up(b"text", "a.txt", "text/plain"), data={"label": "red"},
                          headers=AUTH), 415, "not_an_image")
    limited = [api.post("/feedback", files=up(data), data={"label": "blue"}, headers=AUTH) for _ in range(8)]
    assert limited[-1].status_code == 429 and limited[-1].json()["error"] == "rate_limited"
    assert int(limited[-1].headers["retry-after"]) >= 1


def test_admin_reload_needs_a_bearer_token(api) -> None:
    assert_error(api.post("/admin/reload"), 401, "unauthorized")
    assert_error(api.post("/admin/reload", headers={"authorization": TOKEN}), 401, "unauthorized")
    assert_error(api.post("/admin/reload", headers={"authorization": "Bearer wrong"}), 401, "unauthorized")
    r = api.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["changed"] is False


def test_unknown_paths_and_methods_are_json_and_share_a_metric_label(api) -> None:
    for i in range(5):
        assert_error(api.get(f"/nope-{i}"), 404, "not_found")
    assert_error(api.get("/classify"), 405, "method_not_allowed")
    assert_error(api.delete("/model"), 405, "method_not_allowed")
    text = api.get("/metrics").text
    assert "nope-" not in text and 'endpoint="other"' in text
    assert 'imgcls_http_requests_total{endpoint="/classify",method="POST",status="200"}' in text
    assert "imgcls_rejected_inputs_total" in text and "imgcls_model_batch_size_bucket" in text


def test_request_id_is_echoed_or_made(api) -> None:
    assert api.get("/model", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = api.get("/model", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"]
    assert len(made) == 32 and " " not in made


def test_docs_page_schema_and_demo(api) -> None:
    spec = api.get("/docs.json").json()
    for route, field in (("/classify", "image"), ("/classify_batch", "images"), ("/explain", "image"),
                         ("/feedback", "image")):
        schema = spec["paths"][route]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert field in schema["required"] and schema["properties"][field].get("format") == "binary" or \
            schema["properties"][field]["items"]["format"] == "binary"
    assert "image/png" in spec["paths"]["/explain"]["post"]["responses"]["200"]["content"]
    assert api.get("/").status_code == 200
    demo = api.get("/demo")
    assert demo.status_code == 200 and demo.headers["content-type"].startswith("text/html")


def post_asgi(app, path: str, chunks: list[bytes], ctype: str, pause: float = 0.0) -> tuple[int, bytes]:
    """POST ``chunks`` (``pause`` seconds before each) to the ASGI ``app``: (status, response body)."""
    sent: list[dict] = []
    queue = list(chunks)

    async def receive() -> dict:
        await asyncio.sleep(pause)
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"content-type", ctype.encode())]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_stalled_upload_gets_408_and_a_steady_one_completes() -> None:
    from service.uploads import UploadRequests, UploadRoute

    async def echo(scope, receive, send) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    app = UploadRequests(echo, {"/classify": UploadRoute("image", 1, frozenset())}, 10_000, stall_timeout_s=0.2,
                         max_pixels=10**6, max_pixels_full=10**6)
    status, body = post_asgi(app, "/classify", [b"x" * 100] * 5, "image/jpeg", pause=0.05)  # slow but steady
    assert status == 200 and int(json.loads(body) if body.isdigit() else 0) > 0
    status, body = post_asgi(app, "/classify", [b"x" * 100] * 5, "image/jpeg", pause=0.5)  # stalled
    assert status == 408 and json.loads(body)["error"] == "request_timeout"


def test_waiting_crops_travel_together_and_failures_reach_every_waiter() -> None:
    from service.coalesce import Coalescer

    calls: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        if -1 in items:
            raise RuntimeError("model service down")
        return [i * 10 for i in items]

    async def main() -> tuple[list[int], list[str]]:
        c = Coalescer(send, max_batch=8, max_in_flight=1)
        answers = await asyncio.gather(*(c.submit(i) for i in range(20)))
        failed = await asyncio.gather(c.submit(1), c.submit(-1), c.submit(5), return_exceptions=True)
        return list(answers), [type(e).__name__ for e in failed]

    answers, failed = asyncio.run(main())
    assert answers == [i * 10 for i in range(20)]  # each waiter gets its own answer, in order
    assert [len(c) for c in calls[:4]] == [1, 8, 8, 3]  # the first goes at once, the rest wait for it together
    assert failed == ["int", "RuntimeError", "RuntimeError"]  # -1 and 5 travelled together: both see the failure


def test_single_image_endpoints_refuse_bombs_and_non_images_before_the_endpoint() -> None:
    """A header over the pixel limit (or no image at all) is answered by the upload middleware: the endpoint (here an
    app that records being called) never sees it, raw body or multipart; a good image passes through."""
    from service.uploads import UploadRequests, UploadRoute, encode_multipart

    reached: list[str] = []

    async def endpoint(scope, receive, send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = UploadRequests(endpoint, {"/classify": UploadRoute("image", 1, frozenset(), check_image=True),
                                    "/classify_batch": UploadRoute("images", 4, frozenset())},
                         10**7, stall_timeout_s=5, max_pixels=10**6, max_pixels_full=10**6)
    bomb = io.BytesIO()
    Image.new("L", (2000, 2000)).save(bomb, "PNG")  # 4 MP, over the 1 MP limit

    def call(path: str, body: bytes, ctype: str) -> tuple[int, dict | bytes]:
        status, data = post_asgi(app, path, [body], ctype)
        return status, json.loads(data) if status != 200 else data

    form, form_type = encode_multipart([("image", "b.png", "image/png", bomb.getvalue())], {})
    assert call("/classify", bomb.getvalue(), "image/png")[0] == 413
    status, answer = call("/classify", form, form_type)
    assert status == 413 and answer["error"] == "too_many_pixels", answer
    status, answer = call("/classify", b"hello, not an image", "image/jpeg")
    assert status == 415 and answer["error"] == "not_an_image"
    assert reached == []
    assert call("/classify", jpeg("red"), "image/jpeg")[0] == 200
    assert call("/classify_batch", bomb.getvalue(), "image/png")[0] == 200  # per-image errors stay the endpoint's
    assert reached == ["/classify", "/classify_batch"]


def test_a_client_looping_refused_uploads_is_answered_ever_more_slowly_and_others_are_not() -> None:
    """Past its burst, a client's refusals go out at the throttle's rate; its good answers, and other clients'
    refusals, are not held (service.throttle)."""
    from imgcls.feedback import RateLimiter
    from service.throttle import RefusalThrottle

    delays = RateLimiter(rate=10, burst=3)
    assert [delays.delay("a", 10, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(delays.delay("a", 10, now=0.0), 3) for _ in range(3)] == [0.1, 0.2, 0.3]
    assert delays.delay("b", 10, now=0.0) == 0.0
    assert delays.delay("a", 10, now=10.0) == 0.0  # the bucket refills
    assert RateLimiter(rate=1, burst=1).delay("c", 2, now=0) == 0.0
    capped = RateLimiter(rate=1, burst=1)
    assert max(capped.delay("c", 2, now=0.0) for _ in range(100)) == 2.0

    async def endpoint(scope, receive, send) -> None:
        status = 200 if scope["path"] == "/ok" else 413
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RefusalThrottle(endpoint, rate=20, burst=2)

    async def call(path: str, client: str) -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await app({"type": "http", "path": path, "client": (client, 1)}, None, send)
        return sent[0]["status"]

    async def timed(path: str, client: str, n: int) -> float:
        start = time.perf_counter()
        statuses = await asyncio.gather(*(call(path, client) for _ in range(n)))
        assert set(statuses) == {200 if path == "/ok" else 413}
        return time.perf_counter() - start

    async def main() -> tuple[float, float, float]:
        return (await timed("/bomb", "10.0.0.1", 6), await timed("/ok", "10.0.0.1", 50),
                await timed("/bomb", "10.0.0.2", 2))

    looping, good, other = asyncio.run(main())
    assert looping >= (6 - 2) / 20 * 0.95  # 4 beyond the burst, 50 ms apart
    assert good < 0.15 and other < 0.15


def test_the_docs_page_describes_this_service(api) -> None:
    """The OpenAPI description the docs page at / shows is the service's own, not BentoML's generic text with
    badge images (which load from the internet)."""
    info = api.get("/docs.json").json()["info"]
    assert info["description"].startswith("# Image classifier") and "/classify_batch" in info["description"]
    assert "created with BentoML" not in info["description"] and "img.shields.io" not in info["description"]
    assert api.get("/").status_code == 200


@pytest.mark.parametrize("decode_threads", ["1", "2"])
def test_one_batch_decodes_its_images_and_answers_each_on_its_own(tiny_registry: Path, decode_threads: str) -> None:
    """The model's thread takes encoded images and slow-lane crops in one batch (decoding them itself, or in its
    decoding threads): a bad image, or a crop made for another input size, gets its own error; the others their
    answers."""
    from imgcls.errors import ImgclsError
    from service.answers import Prediction, StaleInput
    from service.config import Config
    from service.inference import Inference

    inference = Inference(Config.from_env({"ARTIFACTS_DIR": str(tiny_registry), "MODEL_POLL_S": "0",
                                           "WORKERS": "1", "DECODE_THREADS": decode_threads}))
    assert (inference.decoders is None) == (decode_threads == "1")
    pre = inference.holder.classifier.preprocess
    crop = np.asarray(pre.resize_crop(Image.open(io.BytesIO(jpeg("red"))).convert("RGB")))
    answers = inference.infer([jpeg("red"), b"not an image", crop[:-1], crop])
    assert isinstance(answers[0], Prediction) and isinstance(answers[3], Prediction)
    assert answers[0].labels[int(np.argmax(answers[0].probs))] == "red"
    np.testing.assert_allclose(answers[0].probs, answers[3].probs, atol=1e-6)  # one path from bytes or crop
    assert isinstance(answers[1], ImgclsError) and answers[1].reason == "not_an_image"
    assert isinstance(answers[2], StaleInput)
