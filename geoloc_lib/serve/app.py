"""The server's routes (FastAPI): the page, the JSON API and the health check, over one `Asker`.

    GET  /          the page: drop or choose photos, see each one's answer card
    POST /predict   photos as multipart form files -> {"run", "photos": [answer or refusal, ...]}
    GET  /run       what the run is (encoder, cells, training data, calibration, test figures)
    GET  /health    {"status": "ok", "run": name}

`POST /predict` answers 200 when every photo was placed; otherwise the status of the first refused photo, the
body still holding every photo's answer or refusal in the order sent. A request with no photo (400), more
photos than `--max-photos` (413) or a body over the size limit (413) is refused whole, with `{"error": ...}`.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from geoloc_lib.serve.asker import Asker, Sent
from geoloc_lib.serve.page import page_html

FIELD = "photos"  # the form field the page sends its files in (any field name is accepted)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before it is parsed or spooled to
    disk, whether it declares its length or streams in chunks."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, max_bytes: int) -> None:
    body = json.dumps(
        {"error": f"the request is over {max_bytes / 2**20:.0f} MB; send fewer or smaller photos"}
    )
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body.encode()})


def create_app(asker: Asker) -> FastAPI:
    limits = asker.limits
    app = FastAPI(title="geoloc-serve", summary=f"where was this photo taken? ({asker.facts['run']})")
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return page_html(asker.facts, limits)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "run": asker.facts["run"]}

    @app.get("/run")
    def run() -> dict:
        return asker.facts

    @app.post("/predict")
    async def predict(request: Request, cards: bool = False) -> JSONResponse:
        try:
            form = await request.form(max_files=limits.max_photos, max_fields=limits.max_photos + 16)
        except HTTPException as err:
            if "Too many files" in str(err.detail):
                return _error(
                    413, f"too many photos in one request ({limits.max_photos} at most; --max-photos)"
                )
            return _error(400, f"not a readable multipart form ({err.detail})")
        try:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not uploads:
                return _error(400, f"no photos in the request: send them as multipart form files ({FIELD!r})")
            sent = []
            for n, upload in enumerate(uploads, 1):
                data = await upload.read(limits.max_upload_bytes + 1)  # one byte past the limit tells
                fits = len(data) <= limits.max_upload_bytes
                sent.append(Sent(upload.filename or f"photo {n}", data if fits else None))
        finally:
            await form.close()
        answers = await run_in_threadpool(asker.answer, sent, cards)
        status = next((a["status"] for a in answers if a["status"] != 200), 200)
        return JSONResponse({"run": asker.facts["run"], "photos": answers}, status_code=status)

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
