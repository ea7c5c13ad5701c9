"""The web UI and its JSON API over a `JobQueue` (server/jobs.py); `kinetograph serve` runs it.

  GET    /                       the page (static/index.html; local assets only)
  GET    /api/health             liveness: worker, queue length, whether the model is loaded
  GET    /api/info               the model, its preset's defaults, the choices (loads the model)
  POST   /api/jobs               multipart: the file field `image` + ImageToVideo arguments -> job (201)
  GET    /api/jobs               newest first
  GET    /api/jobs/{id}          one job: state, progress, eta_seconds, queue_position, camera, error
  GET    /api/jobs/{id}/video    video/mp4, once the job is done (range requests: seekable)
  POST   /api/jobs/{id}/cancel   a queued job at once, a running one at its next step
  DELETE /api/jobs/{id}          a job that is not running, with its files

Errors are JSON `{"detail": "<one line: the problem and the fix>"}`: 400 bad input, 404 no such
job, 409 wrong state, 413 too large, 503 queue full or model not loadable. State-changing
requests sent by another site's page (their Origin is not this server) are refused (403).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from kinetograph.errors import CheckpointError, InputError, KinetographError
from kinetograph.server.jobs import (
    FIELDS,
    Conflict,
    JobQueue,
    NotFound,
    QueueFull,
    TooLarge,
    _too_big,
    job_json,
)

STATIC = Path(__file__).resolve().parent / "static"
FORM_SLACK = 64 * 1024  # multipart framing and the text fields, on top of the image
STATUS = ((TooLarge, 413), (InputError, 400), (NotFound, 404), (Conflict, 409), (QueueFull, 503),
          (CheckpointError, 503))
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self'; "
                               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}


def create_app(queue: JobQueue, *, start_worker: bool = True, allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The app over `queue`. Its lifespan starts the worker (unless `start_worker` is False: jobs
    then wait, as for a server that is down) and, at shutdown, stops it at the running job's next
    step (that job is queued again) and lets go of the data dir. `allowed_hosts`: Host headers
    answered (a loopback server refuses other names: DNS rebinding); None answers any."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_worker:
            queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.close)

    app = FastAPI(title="kinetograph", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.queue = queue
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def same_origin_and_headers(request: Request, call_next):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"detail": "a request from another site was refused; use this server's own page"},
                                    status_code=403, headers=SECURITY_HEADERS)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(KinetographError)
    async def one_line(request: Request, e: KinetographError) -> JSONResponse:
        status = next((code for kind, code in STATUS if isinstance(e, kind)), 500)
        return JSONResponse({"detail": str(e)}, status_code=status)

    def show(job) -> dict:
        return job_json(job, queue.queue_positions())

    # ------------------------------------------------------------------------------------ page

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------------------------- API

    @app.get("/api/health")
    def health() -> dict:
        jobs = queue.list(limit=1000)
        return {"status": "ok", "worker": queue.worker_alive, "model_loaded": queue.runner.loaded,
                "queued": sum(j.state == "queued" for j in jobs),
                "running": next((j.id for j in jobs if j.state == "running"), None), "time": time.time()}

    @app.get("/api/info")
    def info() -> dict:
        limits = queue.limits
        return {**queue.runner.info(), "fields": list(FIELDS), "limits": {
            "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
            "max_prompt_chars": limits.max_prompt_chars, "max_frames": limits.max_frames,
            "max_steps": limits.max_steps, "max_side": limits.max_side, "max_fps": limits.max_fps,
            "max_guidance": limits.max_guidance}}

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request) -> dict:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InputError("send the job as multipart/form-data: the image in the file field 'image', "
                             "the settings as text fields")
        cap = queue.limits.max_upload_bytes + FORM_SLACK
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:  # refuse before reading a byte of it
            raise TooLarge(_too_big(int(length), queue.limits.max_upload_bytes))
        body = bytearray()
        async for chunk in request.stream():  # a chunked upload has no length to check up front
            body += chunk
            if len(body) > cap:
                raise TooLarge(_too_big(len(body), queue.limits.max_upload_bytes))

        async def replay() -> dict:
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        # Two files at most: a second one is refused below, with a message that names the field.
        form = await Request(request.scope, replay).form(max_files=2, max_fields=2 * len(FIELDS),
                                                          max_part_size=FORM_SLACK)
        try:
            fields: dict[str, str] = {}
            for name, value in form.multi_items():
                if name == "image":
                    continue
                if not isinstance(value, str):
                    raise InputError(f"field {name!r} must be text, not a file; only 'image' is a file")
                if name in fields:
                    raise InputError(f"field {name!r} is given twice; give it once")
                fields[name] = value
            images = form.getlist("image")
            if len(images) != 1 or not isinstance(images[0], UploadFile):
                raise InputError("no image: send the photo as the one multipart file field 'image'")
            data = await images[0].read()
            job = await run_in_threadpool(queue.submit, fields, data, images[0].filename or "")
        finally:
            await form.close()
        return show(job)

    @app.get("/api/jobs")
    def list_jobs(limit: int = 200) -> dict:
        positions = queue.queue_positions()
        return {"jobs": [job_json(j, positions) for j in queue.list(max(1, min(limit, 1000)))]}

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict:
        return show(queue.get(job_id))

    @app.get("/api/jobs/{job_id}/video")
    def video(job_id: str) -> FileResponse:
        path = queue.video_path(job_id)
        return FileResponse(path, media_type="video/mp4", filename=f"kinetograph-{job_id[:8]}.mp4",
                            content_disposition_type="inline")

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        return show(queue.cancel(job_id))

    @app.delete("/api/jobs/{job_id}")
    def delete(job_id: str) -> dict:
        queue.delete(job_id)
        return {"id": job_id, "deleted": True}

    return app
