"""`mnistlab serve`: a draw-a-digit page and a JSON API over one trained run.

    GET  /              the page (static/index.html, app.js, style.css: package data)
    POST /api/predict   an image (raw body, or multipart/form-data field "image") ->
                        {"class", "label", "probabilities", "top", "input"}, and how sure
                        (`Predictor.assess`: "unsure", "not_a_digit" and its reason);
                        ?raw=true skips the MNIST preprocessing (the image must be 28x28), ?top=K
    GET  /api/model     the network's description and the server's limits
    GET  /healthz       {"status": "ok"} and counters (predictions, batches, largest batch)

Errors are JSON, `{"error": code, "detail": message}`, with a 4xx status: 400 empty or
malformed, 413 a body over `max_body` bytes or an image over `max_pixels` pixels, 415 not
a PNG/JPEG/BMP/GIF image, 422 an image without ink or a wrong size for raw input;
503 when `max_pending` predictions already wait.

The run is loaded once and every batch size compiled before the first request
(`Predictor.warm_up`). Requests that arrive together share one call of the network:
`Batcher` takes every request waiting when the network becomes free (up to `max_batch`)
and runs them as one batch, on its own thread, while the event loop keeps accepting.
No request waits for a timer: alone, it goes through at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from mnistlab import imaging, runs
from mnistlab.errors import UserError
from mnistlab.predict import Predictor

MAX_BODY = 1_000_000  # bytes of a request body
MAX_BATCH = 64
MAX_PENDING = 1024
INLINE_DECODE = 64_000  # bodies smaller than this decode on the event loop (~0.3 ms); larger on a thread
STATUS = {"empty": 400, "unreadable": 400, "not_image": 415, "too_large": 413, "no_ink": 422,
          "wrong_size": 422}
STATIC = resources.files("mnistlab") / "static"


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Batcher:
    """Answers single images, batching the ones that arrive while the network is busy.

    `predict(image)` queues the image and awaits its rows of probabilities and logits
    (`Predictor.outputs`; the logits for the novelty check). One task takes
    the first waiting image and everything queued behind it (up to `max_batch`), runs
    the network once on its own thread, and hands each caller its row.
    """

    def __init__(self, predictor: Predictor, *, max_batch: int = MAX_BATCH, max_pending: int = MAX_PENDING):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.batches = 0
        self.predictions = 0
        self.largest_batch = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mnistlab-predict")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._queue is not None, "Batcher.start() was not awaited"
        if self._queue.qsize() >= self.max_pending:
            raise ApiError(503, "busy", f"{self.max_pending} predictions are already waiting; try again shortly.")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(image, f) for image, f in batch if not f.done()]  # a caller gone away
            if not batch:
                continue
            try:
                probs, logits = await loop.run_in_executor(self._pool, self.predictor.outputs,
                                                           np.stack([image for image, _ in batch]))
            except Exception as e:  # a bug: every caller of this batch gets it (500)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.predictions += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, f), row, row_logits in zip(batch, probs, logits):
                if not f.done():
                    f.set_result((row, row_logits))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number.")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the request body is {int(declared):,} bytes; the limit "
                           f"is {limit:,}. Send a smaller image.")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: chunked bodies have no length
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the request body is over the {limit:,}-byte limit. "
                           "Send a smaller image.")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, body: bytes) -> tuple[bytes, str]:
    """(image bytes, name for messages): the raw body, or the form's "image" file."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body, "request body"
    async def replay():
        yield body

    try:
        # The body is already within the limit: no part can be larger than the body.
        form = await MultiPartParser(request.headers, replay(), max_files=1, max_fields=8,
                                     max_part_size=len(body) + 1).parse()
    except MultiPartException as e:
        raise ApiError(400, "bad_form", f"malformed multipart form: {e.message}. Send the image "
                       "as the form field 'image' or as the raw request body.") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
    if upload is None:
        raise ApiError(400, "missing_image", "the form has no file: send the image in the field 'image'.")
    try:
        return await upload.read(), upload.filename or "image"
    finally:
        await upload.close()


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _answer_errors_as_json(app: FastAPI) -> None:
    """Every refusal as {"error": code, "detail": text}: ours, HTTP's and bad parameters."""

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error(e.status, e.code, e.detail)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(e.status_code, codes.get(e.status_code, "http_error"), str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors()]
        return _error(422, "invalid_parameter", "; ".join(parts))


# /api/predict reads its body itself (size limit first, then the image): its OpenAPI entry says
# what that body may be, which FastAPI cannot infer from the signature.
_IMAGE = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {"requestBody": {"required": True, "description": "An image file (PNG, JPEG, BMP or GIF): the "
                                "raw body, or the form field 'image'.",
                                "content": {"application/octet-stream": _IMAGE, "image/png": _IMAGE,
                                            "image/jpeg": _IMAGE, "image/bmp": _IMAGE, "image/gif": _IMAGE,
                                            "multipart/form-data": {"schema": {
                                                "type": "object", "required": ["image"],
                                                "properties": {"image": {"type": "string", "format": "binary"}}}}}}}


def create_app(predictor: Predictor, *, max_body: int = MAX_BODY, max_pixels: int = imaging.MAX_PIXELS,
               max_batch: int = MAX_BATCH, max_pending: int = MAX_PENDING):
    """The FastAPI application over a loaded predictor (see the module docstring)."""
    # The routes are closures over the predictor and its batcher, as FastAPI apps are
    # written: one function holds the whole API, a few lines a route.
    batcher = Batcher(predictor, max_batch=max_batch, max_pending=max_pending)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    # The OpenAPI description is served (for clients and code generators); the Swagger and
    # ReDoc pages are not: they load their scripts from a CDN, which the page's policy forbids.
    app = FastAPI(title="mnistlab", version=runs.VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.batcher = batcher
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    _answer_errors_as_json(app)
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    security_headers = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:",
                        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers=security_headers)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "predictions": batcher.predictions, "batches": batcher.batches,
                "largest_batch": batcher.largest_batch}

    description = {**predictor.description(),
                   "limits": {"max_body_bytes": max_body, "max_pixels": max_pixels, "max_batch": max_batch,
                              "formats": list(imaging.FORMATS)}}

    @app.get("/api/model")
    async def model_description():
        return description

    @app.post("/api/predict", openapi_extra=PREDICT_BODY)
    async def predict_image(request: Request, raw: bool = False,
                            top: int = Query(3, ge=1, le=predictor.num_classes)):
        body = await read_body(request, max_body)
        data, name = await image_bytes(request, body)

        def prepare() -> np.ndarray:
            try:
                return imaging.load(data, name=name, raw_input=raw, max_pixels=max_pixels)
            except imaging.ImageError as e:
                raise ApiError(STATUS.get(e.code, 400), e.code, str(e)) from None

        # A small image is quicker to decode here than to hand to a thread; a large one
        # (up to 16 Mpixel, ~100 ms) must not stall the event loop.
        pixels = prepare() if len(data) < INLINE_DECODE else await asyncio.to_thread(prepare)
        probs, logits = await batcher.predict(pixels)
        best = predictor.top(probs, top)
        return JSONResponse({
            "class": best[0][0], "label": predictor.label(best[0][0]),
            "probabilities": [float(p) for p in probs],
            "top": [{"class": c, "label": predictor.label(c), "probability": p} for c, p in best],
            **predictor.assess(probs, image=pixels, logits=logits), "input": pixels.tolist(), "raw": raw})

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one the system picks)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror}). Use an address such as 127.0.0.1.") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}). Pass another --port "
                        "(0 picks a free one).") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


HEADER_TIMEOUT = 10.0  # seconds a client has to send a request's headers


def _protocol():
    """Uvicorn's HTTP protocol with a limit on the time to send a request's headers.

    Uvicorn has none of its own: a client trickling one header byte at a time holds its
    connection open for ever (its keep-alive timer only runs between requests). Written
    here because it is a dozen lines on uvicorn's own protocol class.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeout(HttpToolsProtocol):
        _header_timer = None

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:  # a further request on a kept-alive connection
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._header_timer.cancel()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeout


USE_PRESET = "robust"  # the model for digits people draw and photograph (docs/robustness.md)


def model_for_use(runs_dir: str | Path = "runs") -> Path:
    """The newest completed run of the `robust` preset in `runs_dir`: what `mnistlab serve`
    serves when no run is given. A UserError says the one command that trains it."""
    folder = Path(runs_dir)
    found = [row for row in (runs.listing(folder) if folder.is_dir() else [])
             if row["name"] == USE_PRESET and row["status"] == "completed"]
    if not found:
        raise UserError(f"no run given, and no completed '{USE_PRESET}' run in {folder}/. Train the model made "
                        f"for drawn and photographed digits (about 4 minutes on 2 cores): `mnistlab train "
                        f"--preset {USE_PRESET} --test`, then `mnistlab serve`; or give a run folder: "
                        "`mnistlab serve runs/<folder>`")
    return Path(found[0]["run_dir"])


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          on_ready: Callable[[str, Predictor], Any] | None = None, **limits) -> None:
    """Load `run`, compile, listen on host:port and serve until interrupted."""
    import uvicorn

    predictor = Predictor.from_run(run, max_batch=limits.get("max_batch", MAX_BATCH))
    predictor.warm_up()
    app = create_app(predictor, **limits)
    sock = bind(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=5,
                            lifespan="on", http=_protocol())
    if on_ready:
        on_ready(url_of(sock), predictor)
    uvicorn.Server(config).run(sockets=[sock])
