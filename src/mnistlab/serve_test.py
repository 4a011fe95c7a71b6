"""`mnistlab serve` for real: the server process on a free loopback port, its JSON API with
every limit and error, the micro-batcher, and the page driven in Debian's Chromium.
"""

import asyncio
import socket
import struct
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from mnistlab import drawing, imaging, model, runs, serve
from mnistlab.cli import models
from mnistlab.errors import UserError
from mnistlab.predict import Predictor
from mnistlab.predict_test import (  # noqa: F401 (shared session fixtures)
    CONV_PARAMETERS, mnist, run_cli, trained_conv_run, trained_run, validated_run)

pytestmark = pytest.mark.slow  # processes, servers, or training for seconds each

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(trained_run):
    with serving(trained_run) as url:
        yield url


# The real command on a free loopback port, as the robustness benchmark runs it.
serving = drawing.serving


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor.from_run(trained_run)


def png(array: np.ndarray) -> bytes:
    return imaging.to_png(array)


def bomb_png(side: int) -> bytes:
    """A genuine decompression bomb: side x side black pixels, zlib-compressed ~1000:1."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    packer, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    for word in words:
        assert word in body["detail"], body


# ------------------------------------------------------------------------------- the API


def test_the_server_listens_on_loopback_only_by_default(server):
    assert server.startswith("http://127.0.0.1:")
    import inspect

    assert inspect.signature(models.serve).parameters["host"].default == "127.0.0.1"


def test_health_and_model_description(api, trained_run, predictor):
    health = api.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    described = api.get("/api/model").json()
    assert described["run"] == trained_run.name  # its name, never the server's path
    assert described["classes"] == [str(k) for k in range(10)]
    assert [l["units"] for l in described["layers"] if l["type"] == "dense"] == [256, 10]
    assert described["test_accuracy"] == pytest.approx(predictor.summary["test"]["accuracy"])
    assert described["limits"] == {"max_body_bytes": 1_000_000, "max_pixels": 16_000_000, "max_batch": 64,
                                   "formats": ["PNG", "JPEG", "BMP", "GIF"]}


def test_the_openapi_description_is_served_and_says_what_predict_takes(api):
    import importlib.metadata

    described = api.get("/openapi.json")
    assert described.status_code == 200
    spec = described.json()
    assert spec["openapi"].startswith("3.") and spec["info"] == {"title": "mnistlab",
                                                                 "version": importlib.metadata.version("mnistlab")}
    assert {"/healthz", "/api/model", "/api/predict"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]
    assert body["required"] and {"image/png", "multipart/form-data"} <= set(body["content"])
    assert body["content"]["multipart/form-data"]["schema"]["required"] == ["image"]  # the field serve reads
    params = {p["name"]: p for p in spec["paths"]["/api/predict"]["post"]["parameters"]}
    assert set(params) == {"raw", "top"} and params["top"]["schema"]["maximum"] == 10
    assert api.get("/docs").status_code == 404  # the Swagger page would load scripts from a CDN


def test_predict_answers_with_mnistlabs_own_numbers(api, mnist, predictor):
    for i in range(5):
        digit = mnist.test_images[i]
        body = png(255 - digit)  # dark on light: the preprocessing inverts it
        answer = api.post("/api/predict", content=body, headers={"content-type": "image/png"}).json()
        seen = imaging.load(body)
        np.testing.assert_array_equal(np.array(answer["input"], np.uint8), seen)
        expected = predictor.probabilities(seen[None])[0]
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
        assert answer["class"] == int(expected.argmax()) and answer["label"] == str(answer["class"])
        assert [t["class"] for t in answer["top"]] == list(np.argsort(-expected)[:3])
        assert answer["raw"] is False
        # A run without calibration: no unsure and no not-a-digit flag (None for both).
        assert {k: answer[k] for k in ("confidence", "calibrated", "unsure", "runner_up", "not_a_digit",
                                       "not_a_digit_reason")} == predictor.assess(expected)


def test_a_conv_run_is_served_with_its_networks_numbers(trained_conv_run, mnist):
    # The server describes the network at start-up and answers through the batcher: both
    # must work for convolutional layers, not only for dense ones.
    run = runs.open_run(trained_conv_run)
    with serving(trained_conv_run) as url, httpx.Client(base_url=url, timeout=30) as client:
        described = client.get("/api/model").json()
        assert [l["type"] for l in described["layers"]] == [layer.type for layer in run.spec.model.layers]
        assert described["parameters"] == CONV_PARAMETERS
        digits = mnist.test_images[:4]
        answers = [client.post("/api/predict?raw=true", content=png(d)).json() for d in digits]
    expected = np.asarray(model.probabilities(run.spec.model, run.params(), digits))
    np.testing.assert_allclose([a["probabilities"] for a in answers], expected, atol=1e-6)
    assert [a["class"] for a in answers] == list(expected.argmax(1))


def test_raw_skips_the_preprocessing(api, mnist, predictor):
    digit = mnist.test_images[7]
    answer = api.post("/api/predict?raw=true", content=png(digit)).json()
    np.testing.assert_array_equal(np.array(answer["input"], np.uint8), digit)
    np.testing.assert_allclose(answer["probabilities"], predictor.probabilities(digit[None])[0], atol=1e-6)
    assert_error(api.post("/api/predict?raw=true", content=png(np.zeros((32, 32), np.uint8))),
                 422, "wrong_size", "must be 28x28", "this image is 32x32")


def test_multipart_uploads_and_top_k(api, mnist):
    body = png(mnist.test_images[3])
    plain = api.post("/api/predict", content=body).json()
    form = api.post("/api/predict?top=5", files={"image": ("three.png", body, "image/png")}).json()
    assert form["probabilities"] == plain["probabilities"] and len(form["top"]) == 5
    other_name = api.post("/api/predict", files={"upload": ("x.png", body, "image/png")}).json()
    assert other_name["class"] == plain["class"]
    assert_error(api.post("/api/predict", files={"note": (None, "no file here")}), 400, "missing_image",
                 "field 'image'")
    # A form whose file is not an image names the uploaded file.
    assert_error(api.post("/api/predict", files={"image": ("notes.txt", b"hello", "text/plain")}),
                 415, "not_image", "notes.txt")


@pytest.mark.parametrize("query", ["top=0", "top=11", "top=many", "raw=perhaps"])
def test_bad_parameters_are_422(api, mnist, query):
    assert_error(api.post(f"/api/predict?{query}", content=png(mnist.test_images[0])), 422, "invalid_parameter",
                 query.split("=")[0])


def test_body_limit_is_one_megabyte_exactly(api, mnist):
    digit = png(255 - mnist.test_images[0])
    at_limit = digit + b"\0" * (1_000_000 - len(digit))  # bytes after IEND are ignored by decoders
    assert api.post("/api/predict", content=at_limit).status_code == 200
    assert_error(api.post("/api/predict", content=at_limit + b"\0"), 413, "too_large", "1,000,001 bytes",
                 "limit is 1,000,000")

    def chunked():  # no Content-Length: the server counts as the bytes arrive
        for _ in range(20):
            yield b"\0" * 100_000

    assert_error(api.post("/api/predict", content=chunked()), 413, "too_large", "1,000,000-byte limit")


def test_decompression_bombs_and_huge_images_are_refused(api):
    bomb = bomb_png(12_000)  # 144 million pixels (144 MB decoded) in ~140 kB
    assert len(bomb) < 1_000_000
    # refused from the header (imaging_test shows no pixel is decoded first)
    assert_error(api.post("/api/predict", content=bomb), 413, "too_large", "12000x12000", "16,000,000")
    assert_error(api.post("/api/predict", content=bomb_png(4001)), 413, "too_large")  # just over
    assert api.get("/healthz").status_code == 200  # and the server is fine


@pytest.mark.parametrize("body, status, code, words", [
    (b"", 400, "empty", ["no data"]),
    (b"{\"pixels\": [1, 2, 3]}", 415, "not_image", ["PNG, JPEG, BMP or GIF"]),
    (png(np.full((8, 8), 200, np.uint8))[:50], 400, "unreadable", ["corrupt or truncated"]),
    (png(np.full((64, 64), 255, np.uint8)), 422, "no_ink", ["no digit found"]),
])
def test_bad_images_get_clear_json_errors(api, body, status, code, words):
    assert_error(api.post("/api/predict", content=body), status, code, *words)


def test_wrong_method_path_and_form(api):
    assert_error(api.get("/api/predict"), 405, "method_not_allowed")
    assert_error(api.get("/api/nothing"), 404, "not_found")
    bad_form = api.post("/api/predict", content=b"--x\r\nnonsense",
                        headers={"content-type": "multipart/form-data"})  # no boundary
    assert_error(bad_form, 400, "bad_form")


def test_the_page_and_its_files(api):
    page = api.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = api.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert api.get("/static/style.css").status_code == 200


def test_requests_that_arrive_together_are_batched(server, mnist, predictor):
    bodies = [png(mnist.test_images[i]) for i in range(64)]

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            before = (await client.get("/healthz")).json()
            answers = await asyncio.gather(*(client.post("/api/predict?raw=true", content=b) for b in bodies))
            after = (await client.get("/healthz")).json()
        return before, [a.json() for a in answers], after

    before, answers, after = asyncio.run(fire())
    expected = predictor.probabilities(mnist.test_images[:64])
    np.testing.assert_allclose([a["probabilities"] for a in answers], expected, atol=1e-6)
    assert after["predictions"] - before["predictions"] == 64
    # Whether requests overlap enough to share a batch depends on the machine's speed (on
    # an idle one each is answered before the next arrives), so the grouping itself is
    # checked deterministically in the batcher tests below; here, every answer is right
    # and every prediction is accounted for in some batch.
    assert 1 <= after["batches"] - before["batches"] <= 64


# ----------------------------------------------------------------------- batcher, binding


def test_batcher_takes_everything_waiting_up_to_max_batch(mnist, predictor):
    async def scenario():
        batcher = serve.Batcher(predictor, max_batch=4, max_pending=100)
        await batcher.start()
        rows = await asyncio.gather(*(batcher.predict(mnist.test_images[i]) for i in range(10)))
        stats = (batcher.batches, batcher.largest_batch, batcher.predictions)
        await batcher.stop()
        return [np.stack(part) for part in zip(*rows)], stats

    (probs, logits), stats = asyncio.run(scenario())
    assert stats == (3, 4, 10)  # 4 + 4 + 2: all ten were waiting before the first batch ran
    np.testing.assert_allclose(probs, predictor.probabilities(mnist.test_images[:10]), atol=1e-6)
    np.testing.assert_allclose(logits, predictor.logits(mnist.test_images[:10]), atol=1e-5)


def test_batcher_refuses_when_too_many_wait(mnist, predictor):
    async def scenario():
        batcher = serve.Batcher(predictor, max_batch=2, max_pending=3)
        await batcher.start()
        results = await asyncio.gather(*(batcher.predict(mnist.test_images[i]) for i in range(6)),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, serve.ApiError)]
    assert len(refused) == 3 and all(r.status == 503 and r.code == "busy" for r in refused)
    assert sum(isinstance(r, tuple) for r in results) == 3


def test_bind_picks_a_free_loopback_port_and_explains_a_taken_one():
    sock = serve.bind("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert serve.url_of(sock) == f"http://127.0.0.1:{port}"
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen()
        try:
            with pytest.raises(UserError, match=r"cannot listen on 127.0.0.1:\d+ .*Pass another --port"):
                serve.bind("127.0.0.1", other.getsockname()[1])
        finally:
            other.close()
    finally:
        sock.close()


# ------------------------------------------------------------------------------ the page


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 700}, has_touch=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    # Errors the tests provoke on purpose (4xx answers) are logged by Chromium as failed
    # loads; anything else is a bug in the page.
    assert [p for p in problems if "status of 4" not in p] == []


def pad_origin(page) -> tuple[float, float, float]:
    box = page.locator("#pad").bounding_box()
    return box["x"], box["y"], box["width"] / 280  # CSS pixels per pad pixel


def stroke(page, points, steps: int = 4) -> None:
    x0, y0, k = pad_origin(page)
    page.mouse.move(x0 + points[0][0] * k, y0 + points[0][1] * k)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x * k, y0 + y * k, steps=steps)
    page.mouse.up()


def predictions(page) -> int:
    return int(page.evaluate("() => Number(document.body.dataset.predictions || 0)"))


def settle(page) -> None:
    """Wait until the page has shown the answer for its latest drawing."""
    page.wait_for_function("() => !document.body.dataset.busy", timeout=10_000)
    page.wait_for_timeout(300)
    n = predictions(page)
    page.wait_for_timeout(300)
    assert predictions(page) == n


def bars(page) -> dict[int, float]:
    return {int(li.get_attribute("data-class")): float(li.get_attribute("data-probability"))
            for li in page.locator("#bars li").all()}


def seen_image(page) -> np.ndarray:
    data = page.evaluate("() => Array.from(document.getElementById('seen').getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data)")
    return np.array(data, np.uint8).reshape(28, 28, 4)[..., 0]


def trace(digit: np.ndarray) -> list[list[tuple[float, float]]]:
    """A 28x28 digit as horizontal pen strokes over its ink, one per run of bright pixels."""
    strokes = []
    for y in range(28):
        on = np.flatnonzero(digit[y] > 128)
        if not len(on):
            continue
        runs = np.split(on, np.flatnonzero(np.diff(on) > 1) + 1)
        for run in runs:
            strokes.append([(run[0] * 10 + 5, y * 10 + 5), (run[-1] * 10 + 5.01, y * 10 + 5)])
    return strokes


def test_the_page_names_the_networks_layers(browser, server, trained_conv_run):
    def shown(url: str) -> str:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            return page.locator("#model").text_content()
        finally:
            context.close()

    assert shown(server).startswith("fast: 784-256-10 network on mnist, test accuracy ")
    with serving(trained_conv_run) as url:
        assert shown(url) == "small-cnn: 784-conv8-conv16-10 network on mnist"


def test_drawing_a_one_shows_1_with_live_bars(page):
    x0, y0, k = pad_origin(page)
    page.mouse.move(x0 + 140 * k, y0 + 40 * k)
    page.mouse.down()
    page.mouse.move(x0 + 140 * k, y0 + 140 * k, steps=10)
    # Still drawing: the bars already moved (a prediction came back mid-stroke).
    page.wait_for_function("() => Number(document.body.dataset.predictions || 0) > 0", timeout=10_000)
    page.mouse.move(x0 + 140 * k, y0 + 240 * k, steps=10)
    page.mouse.up()
    settle(page)
    assert page.locator("#label").text_content() == "1"
    probs = bars(page)
    assert max(probs, key=probs.get) == 1 and probs[1] > 0.5
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    top = page.locator("#bars li.top")
    assert top.get_attribute("data-class") == "1"
    width = top.locator(".fill").evaluate("e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
    assert width == pytest.approx(probs[1], abs=0.02)
    assert page.locator("#bars li[data-class='1'] .pct").text_content() == f"{probs[1] * 100:.1f}%"
    seen = seen_image(page)
    rows, cols = np.nonzero(seen)
    assert rows.max() - rows.min() + 1 == 20  # a vertical stroke: 20 px tall, thin
    assert cols.max() - cols.min() + 1 <= 5


def test_tracing_real_mnist_digits_gives_their_labels(page, mnist, predictor):
    # The first confident test digit of three different classes, traced with the mouse.
    probs = predictor.probabilities(mnist.test_images[:100])
    chosen, labels = [], set()
    for i in range(100):
        label = int(mnist.test_labels[i])
        if probs[i].max() > 0.99 and probs[i].argmax() == label and label not in labels and label != 1:
            chosen.append(i)
            labels.add(label)
        if len(chosen) == 3:
            break
    for i in chosen:
        page.click("#clear")
        for points in trace(mnist.test_images[i]):
            stroke(page, points, steps=2)
        settle(page)
        assert page.locator("#label").text_content() == str(mnist.test_labels[i]), f"test digit {i}"
        assert page.locator("#bars li.top").get_attribute("data-class") == str(mnist.test_labels[i])


def test_undo_and_clear(page):
    stroke(page, [(140, 40), (140, 240)])  # a 1
    settle(page)
    assert page.locator("#label").text_content() == "1"
    one = bars(page)
    stroke(page, [(60, 60), (220, 60)])  # a bar across the top: no longer a 1
    settle(page)
    assert bars(page) != one
    page.click("#undo")
    settle(page)
    assert page.locator("#label").text_content() == "1"
    assert bars(page) == pytest.approx(one, abs=1e-6)  # the same drawing, the same answer
    page.click("#clear")
    assert page.locator("#label").text_content() == "–"
    assert set(bars(page).values()) == {0.0}
    assert seen_image(page).max() == 0
    blank = page.evaluate("() => Array.from(document.getElementById('pad').getContext('2d')"
                          ".getImageData(0, 0, 280, 280).data).every(v => v === 255)")
    assert blank


def test_a_finger_can_draw(page):
    x0, y0, k = pad_origin(page)
    cdp = page.context.new_cdp_session(page)

    def touch(kind, y):
        points = [] if kind == "touchEnd" else [{"x": x0 + 140 * k, "y": y0 + y * k}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", 40)
    for y in range(50, 250, 10):
        touch("touchMove", y)
    touch("touchEnd", 240)
    settle(page)
    assert page.locator("#label").text_content() == "1"


def test_uploading_a_test_image_shows_its_answer(page, mnist, predictor, tmp_path):
    probs = predictor.probabilities(mnist.test_images[:50])
    i = next(i for i in range(50) if probs[i].max() > 0.99 and mnist.test_labels[i] not in (1,))
    path = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[i]).resize((112, 112)).save(path)
    page.set_input_files("#upload", str(path))
    page.wait_for_function("(label) => document.getElementById('label').textContent === label",
                           arg=str(mnist.test_labels[i]), timeout=10_000)
    assert page.locator("#error").is_hidden()
    np.testing.assert_array_equal(seen_image(page), imaging.load(path))


def test_an_unsure_answer_is_said_with_its_runner_up(browser, trained_run, mnist, tmp_path):
    from mnistlab.predict_test import calibrated

    run_dir = calibrated(trained_run, tmp_path, temperature=1.0, unsure_below=1.01)  # nothing is sure
    probs = Predictor.from_run(run_dir).probabilities(mnist.test_images[:1])[0]
    first, second = np.argsort(-probs, kind="stable")[:2]
    path = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0]).save(path)
    with serving(run_dir) as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.set_input_files("#upload", str(path))
            page.wait_for_function("() => document.getElementById('confidence').textContent.includes('?')",
                                   timeout=10_000)
            assert page.locator("#confidence").text_content() == f"{first}? could be {second}"
            assert "unsure" in page.locator("#confidence").get_attribute("class")
        finally:
            context.close()


def test_a_face_gets_no_digit_but_why_and_a_drawn_digit_its_answer(browser, validated_run, mnist, tmp_path):
    from mnistlab.predict_test import first_face_flagged

    face, reason = first_face_flagged(Predictor.from_run(validated_run))
    Image.fromarray(face).save(tmp_path / "face.png")
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")  # a 7
    with serving(validated_run) as url:
        answer = httpx.post(url + "/api/predict", content=(tmp_path / "face.png").read_bytes(),
                            headers={"content-type": "image/png"}, timeout=30).json()
        assert (answer["not_a_digit"], answer["not_a_digit_reason"]) == (True, reason)
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            confidence = page.locator("#confidence")
            page.set_input_files("#upload", str(tmp_path / "face.png"))
            page.wait_for_function("() => document.getElementById('confidence').textContent.startsWith('not a')",
                                   timeout=10_000)
            assert confidence.text_content() == f"not a digit? ({reason})"
            assert page.locator("#label").text_content() == "?"  # no digit given
            assert {"unsure", "not-a-digit"} <= set(confidence.get_attribute("class").split())
            page.set_input_files("#upload", str(tmp_path / "digit.png"))
            page.wait_for_function("() => document.getElementById('label').textContent === '7'", timeout=10_000)
            assert "not-a-digit" not in confidence.get_attribute("class").split()
            page.click("#clear")
            before = predictions(page)
            stroke(page, [(60, 50), (220, 50), (120, 240)])  # a 7 drawn with the mouse passes too
            page.wait_for_function(f"() => Number(document.body.dataset.predictions || 0) > {before}",
                                   timeout=10_000)
            settle(page)
            assert page.locator("#label").text_content() == "7"
            assert "not-a-digit" not in confidence.get_attribute("class").split()
        finally:
            context.close()


@pytest.mark.parametrize("name, content, words", [
    ("notes.png", b"these are my notes", "not an image"),
    ("empty.png", b"", "no data"),
    ("blank.png", png(np.full((64, 64), 255, np.uint8)), "no digit found"),
    ("huge.bmp", b"BM" + b"\0" * 1_100_000, "limit"),
])
def test_bad_uploads_show_an_error(page, tmp_path, name, content, words):
    stroke(page, [(140, 40), (140, 240)])
    settle(page)
    path = tmp_path / name
    path.write_bytes(content)
    page.set_input_files("#upload", str(path))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=10_000)
    assert name in error.text_content() and words in error.text_content()
    assert page.locator("#label").text_content() == "–"  # no stale answer next to the error


def test_a_client_that_trickles_its_headers_is_cut_off(server):
    # Slow headers (one byte a second, never finished): the server closes the connection
    # after serve.HEADER_TIMEOUT seconds instead of holding it for ever. Bounded: 3x that.
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.settimeout(None)  # blocking; each read below asks not to wait
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 3 * serve.HEADER_TIMEOUT:
            try:
                conn.sendall(b"X")
                if conn.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(1)
        assert closed and serve.HEADER_TIMEOUT <= time.monotonic() - start + 1


def test_serve_without_a_run_takes_the_newest_completed_robust_run(mnist, tmp_path, capsys, monkeypatch):  # noqa: F811
    import mnistlab

    with pytest.raises(UserError, match="mnistlab train --preset robust --test"):
        serve.model_for_use(tmp_path)
    tiny = ["training.subset=640", "training.epochs=1"]
    older = mnistlab.train(mnistlab.with_overrides(mnistlab.preset("robust"), tiny), arrays=mnist, runs_dir=tmp_path)
    newer = mnistlab.train(mnistlab.with_overrides(mnistlab.preset("robust"), tiny), arrays=mnist, runs_dir=tmp_path)
    mnistlab.train(mnistlab.with_overrides(mnistlab.preset("fast"), tiny), arrays=mnist, runs_dir=tmp_path)
    assert older.run_dir != newer.run_dir
    assert serve.model_for_use(tmp_path) == newer.run_dir
    # From a script (no terminal to ask at), the command says what trains it, exit 2.
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    code, _, err = run_cli(["serve", "--runs-dir", tmp_path / "none"], capsys, monkeypatch)
    assert code == 2 and "mnistlab train --preset robust --test" in err
