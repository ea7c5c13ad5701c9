"""The web server's persistent job queue: jobs in SQLite, run one at a time by one worker thread.

A data dir holds everything the server writes (docs/server.md):
  jobs.sqlite3            the queue (WAL): one row per job, its parameters as JSON
  jobs/<id>/input.<fmt>   the uploaded image, named by the job id and Pillow's format, never the user's name
  jobs/<id>/video.mp4     the result, written atomically (io/video.py): never half a file
  uploads/                uploads being checked; emptied at start
  .lock                   held by the one server that uses the folder

Flow: `JobQueue.submit` (check the parameters and the image, or refuse with no row and no file)
-> queued -> the worker claims the oldest -> running (progress from the pipeline's callback) ->
done | failed | cancelled. Restart safety: a job left running by a crash is queued again at the
next start and re-run from the beginning (MAX_RUNS times at most: a job that keeps killing the
server fails instead); queued jobs run in the order they were created.

Decisions:
- One worker: a box runs one generation at a time, so a second one would only share its cores.
- The pipeline is loaded once, at first need (the first job, or the first request that needs the
  model's defaults and size rule), and kept.
- Parameters are stored resolved against the checkpoint's preset, so a job's JSON says exactly
  what ran; `None` means the pipeline decides (a camera prior without a move, no prompt).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kinetograph.errors import CheckpointError, InputError, KinetographError

log = logging.getLogger("kinetograph.server")

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
INPUT_NAME = re.compile(r"input\.[a-z0-9]{1,8}")
VIDEO_NAME = "video.mp4"
DB_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 1
MAX_RUNS = 3  # a job the server stopped during this many times fails instead of running again
DEFAULT_SEED = 23  # as `kinetograph generate`
SEED_MAX = 2**63 - 1

# The form fields a job takes: the ImageToVideo keyword arguments a user may set. The checkpoint,
# the device and every path are the operator's (`kinetograph serve`), never a user's.
TEXT_FIELDS = ("prompt", "negative_prompt")
INT_FIELDS = ("num_frames", "num_inference_steps", "height", "width", "fps", "motion_bucket_id", "seed")
FLOAT_FIELDS = ("min_guidance_scale", "max_guidance_scale", "noise_aug_strength", "text_guidance_scale",
                "camera_prior")
BOOL_FIELDS = ("pin_first_frame", "deflicker", "camera_prompt")
CHOICE_FIELDS = ("sampler", "guidance_ramp", "camera_move")
FIELDS = TEXT_FIELDS + INT_FIELDS + FLOAT_FIELDS + BOOL_FIELDS + CHOICE_FIELDS
TRUE, FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


class TooLarge(InputError):
    """An upload over one of the server's size limits (HTTP 413)."""


class QueueFull(KinetographError):
    """Too many jobs waiting (HTTP 503)."""


class Conflict(KinetographError):
    """The job is in a state that does not allow this (HTTP 409)."""


class NotFound(KinetographError):
    """No such job (HTTP 404)."""


class Cancelled(Exception):
    """Raised from the progress callback: the user cancelled the running job."""


class Interrupted(Exception):
    """Raised from the progress callback: the server is stopping; the job is queued again."""


@dataclass(frozen=True)
class Limits:
    """What one job may ask of the server; `kinetograph serve` sets the upload size."""

    max_upload_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 64_000_000  # of the uploaded image (decompression bombs); a 50 MP phone photo passes
    max_prompt_chars: int = 1000
    max_frames: int = 64
    max_steps: int = 150
    max_side: int = 2048  # height and width of the video
    max_fps: int = 60
    max_guidance: float = 30.0  # image and text guidance scales
    max_queued: int = 100


@dataclass
class Job:
    id: str
    seq: int
    created: float
    state: str
    params: dict[str, Any]
    image: str  # file name inside the job's folder
    image_name: str  # the user's file name, shown only
    step: int = 0
    total: int = 0
    started: float | None = None
    updated: float | None = None  # time of the last progress report
    finished: float | None = None
    runs: int = 0
    cancel_requested: bool = False
    error: str | None = None
    camera: list[str] = field(default_factory=list)  # what `generate` prints about the camera
    warnings: list[str] = field(default_factory=list)

    def eta(self, now: float) -> float | None:
        """Seconds left while running, from the time per step so far (model loading and
        encoding included, so early estimates run high; decoding after the last step is not)."""
        if self.state != "running" or not self.step or not self.total or self.started is None:
            return None
        per_step = (self.updated - self.started) / self.step
        return max(0.0, per_step * (self.total - self.step) - (now - self.updated))


def check_job_id(job_id: str) -> str:
    """A job id is 32 lowercase hex digits; anything else names no job (and no file)."""
    if not JOB_ID.fullmatch(job_id):
        raise NotFound("no such job: a job id is 32 hex digits, as POST /api/jobs returns")
    return job_id


# ---------------------------------------------------------------------------------------- storage


class JobStore:
    """The jobs table. One connection shared by the threads, one lock around it: the queue does a
    few small writes a second at most."""

    COLUMNS = ("id", "seq", "created", "state", "params", "image", "image_name", "step", "total", "started",
               "updated", "finished", "runs", "cancel_requested", "error", "camera", "warnings")

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job acknowledged survives a power cut
        with self._db:
            self._db.execute(
                f"""CREATE TABLE IF NOT EXISTS jobs (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    created REAL NOT NULL,
                    state TEXT NOT NULL CHECK (state IN {STATES}),
                    params TEXT NOT NULL,
                    image TEXT NOT NULL,
                    image_name TEXT NOT NULL DEFAULT '',
                    step INTEGER NOT NULL DEFAULT 0,
                    total INTEGER NOT NULL DEFAULT 0,
                    started REAL, updated REAL, finished REAL,
                    runs INTEGER NOT NULL DEFAULT 0,
                    cancel_requested INTEGER NOT NULL DEFAULT 0,
                    error TEXT,
                    camera TEXT NOT NULL DEFAULT '[]',
                    warnings TEXT NOT NULL DEFAULT '[]')"""
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq)")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InputError(f"{path} was written by a newer kinetograph (schema {version}); upgrade, "
                                 "or pass another --data-dir")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple | None) -> Job | None:
        if row is None:
            return None
        d = dict(zip(self.COLUMNS, row))
        for key in ("params", "camera", "warnings"):
            d[key] = json.loads(d[key])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return Job(**d)

    def _select(self, where: str = "", args: tuple = (), order: str = "seq DESC", limit: int = -1) -> list[Job]:
        sql = f"SELECT {', '.join(self.COLUMNS)} FROM jobs {where} ORDER BY {order} LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [self._row(r) for r in rows]

    def get(self, job_id: str) -> Job | None:
        found = self._select("WHERE id = ?", (job_id,))
        return found[0] if found else None

    def list(self, limit: int) -> list[Job]:
        return self._select(limit=limit)

    def queued_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq")]

    def add(self, job_id: str, params: dict, image: str, image_name: str, max_queued: int) -> None:
        with self._lock, self._db:
            waiting = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= max_queued:
                raise QueueFull(f"{waiting} jobs are waiting, this server's limit; try again when some have run")
            self._db.execute("INSERT INTO jobs (id, created, state, params, image, image_name) "
                             "VALUES (?, ?, 'queued', ?, ?, ?)",
                             (job_id, time.time(), json.dumps(params), image, image_name))

    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked running; None when none waits."""
        with self._lock, self._db:
            row = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            now = time.time()
            self._db.execute("UPDATE jobs SET state = 'running', started = ?, updated = ?, step = 0, total = 0, "
                             "runs = runs + 1, error = NULL, camera = '[]', warnings = '[]' WHERE id = ?",
                             (now, now, row[0]))
        return self.get(row[0])

    def update(self, job_id: str, **values: Any) -> None:
        for key in ("camera", "warnings"):
            if key in values:
                values[key] = json.dumps(values[key])
        assert values and set(values) <= set(self.COLUMNS), values
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._lock, self._db:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))

    def progress(self, job_id: str, step: int, total: int) -> None:
        self.update(job_id, step=step, total=total, updated=time.time())

    def _state(self, job_id: str) -> str:
        """The job's state (NotFound if there is none); call with the lock held."""
        row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return row[0]

    def request_cancel(self, job_id: str) -> str:
        """Cancel a queued job now, flag a running one; returns the state it was in."""
        with self._lock, self._db:
            state = self._state(job_id)
            if state == "queued":
                self._db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?",
                                 (time.time(), job_id))
            elif state == "running":
                self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise Conflict(f"job {job_id} is already {state}; delete it instead")
            return state

    def delete(self, job_id: str) -> None:
        with self._lock, self._db:
            if self._state(job_id) == "running":
                raise Conflict(f"job {job_id} is running; cancel it first (POST /api/jobs/{job_id}/cancel)")
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recover(self) -> list[str]:
        """At start: jobs a crash left running are queued again (cancelled if that was asked,
        failed after MAX_RUNS tries); returns their ids."""
        with self._lock, self._db:
            rows = self._db.execute("SELECT id, runs, cancel_requested FROM jobs WHERE state = 'running'").fetchall()
            now = time.time()
            for job_id, runs, cancel in rows:
                if cancel:
                    self._db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (now, job_id))
                elif runs >= MAX_RUNS:
                    self._db.execute(
                        "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                        (now, f"the server stopped during this job {runs} times; try fewer frames, fewer steps "
                              "or a smaller size", job_id))
                else:
                    self._db.execute("UPDATE jobs SET state = 'queued', step = 0, total = 0, started = NULL, "
                                     "updated = NULL WHERE id = ?", (job_id,))
        return [r[0] for r in rows]

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM jobs")}


# ------------------------------------------------------------------------------------------ model


class Runner:
    """The pipeline, loaded once at first need, and how a job's parameters become a call to it."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        self.checkpoint = Path(checkpoint)
        self.device = device
        self._pipe = None
        self._error: str | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def pipeline(self):
        """The ImageToVideo pipeline; CheckpointError if it cannot be loaded (told once, then again
        at each call without retrying: the operator fixes the checkpoint and restarts)."""
        with self._lock:
            if self._pipe is None:
                if self._error:
                    raise CheckpointError(self._error)
                from kinetograph.pipeline.image_to_video import ImageToVideo

                t0 = time.perf_counter()
                try:
                    self._pipe = ImageToVideo.from_checkpoint(self.checkpoint, device=self.device)
                except KinetographError as e:
                    self._error = f"the model could not be loaded: {e}"
                    raise CheckpointError(self._error) from None
                log.info("loaded %s (%s) on %s in %.1fs", self.checkpoint.name, self._pipe.preset.name, self.device,
                         time.perf_counter() - t0)
            return self._pipe

    def info(self) -> dict[str, Any]:
        """What the web form shows: the model, its defaults, the choices."""
        from kinetograph.data.camera_motion import MOTIONS
        from kinetograph.diffusion.samplers import SAMPLERS
        from kinetograph.pipeline.image_to_video import GUIDANCE_RAMPS

        pipe = self.pipeline()
        d = pipe.preset.sampling
        cfg = pipe.model.cfg
        return {
            "model": self.checkpoint.name,
            "preset": pipe.preset.name,
            "device": str(pipe.device),
            "text": bool(cfg.unet.text_dim),
            "camera_head": pipe.model.unet.camera_head is not None,
            "size_multiple": pipe.size_multiple,
            "defaults": {
                "num_frames": d.num_frames, "num_inference_steps": d.num_inference_steps, "height": d.height,
                "width": d.width, "fps": d.fps, "motion_bucket_id": d.motion_bucket_id,
                "noise_aug_strength": d.noise_aug_strength, "min_guidance_scale": d.min_guidance_scale,
                "max_guidance_scale": d.max_guidance_scale, "seed": DEFAULT_SEED, "sampler": "euler",
                "guidance_ramp": "linear", "pin_first_frame": d.pin_first_frame, "deflicker": d.deflicker,
                "camera_prior": d.camera_prior,
            },
            "choices": {"sampler": list(SAMPLERS), "guidance_ramp": list(GUIDANCE_RAMPS), "camera_move": list(MOTIONS)},
        }

    def check_params(self, form: Mapping[str, str], limits: Limits) -> dict[str, Any]:
        """Form fields -> the job's ImageToVideo arguments, resolved against the preset. Refuses
        unknown fields, bad types and values past the server's limits; the rest is the
        pipeline's own check (`ImageToVideo.check_args`: size multiple, ranges, names)."""
        from kinetograph.pipeline.camera_prior import check_move

        unknown = sorted(set(form) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
        given = {k: v.strip() for k, v in form.items() if v.strip() != ""}  # an empty form field = the default
        p: dict[str, Any] = {}
        for name in TEXT_FIELDS:
            text = given.get(name)
            if text is not None and len(text) > limits.max_prompt_chars:
                raise InputError(f"{name} is {len(text)} characters; this server takes at most "
                                 f"{limits.max_prompt_chars}")
            p[name] = text
        for name in INT_FIELDS:
            p[name] = _parse(name, given.get(name), int)
        for name in FLOAT_FIELDS:
            p[name] = _parse(name, given.get(name), float)
        for name in BOOL_FIELDS:
            p[name] = _parse(name, given.get(name), bool)
        for name in CHOICE_FIELDS:
            p[name] = given.get(name)

        pipe = self.pipeline()
        d = pipe.preset.sampling
        for name, default in (("num_frames", d.num_frames), ("num_inference_steps", d.num_inference_steps),
                              ("height", d.height), ("width", d.width), ("fps", d.fps),
                              ("motion_bucket_id", d.motion_bucket_id), ("seed", DEFAULT_SEED),
                              ("noise_aug_strength", d.noise_aug_strength),
                              ("min_guidance_scale", d.min_guidance_scale),
                              ("max_guidance_scale", d.max_guidance_scale),
                              ("pin_first_frame", d.pin_first_frame), ("deflicker", d.deflicker),
                              ("sampler", "euler"), ("guidance_ramp", "linear")):
            if p[name] is None:
                p[name] = default
        for name, cap in (("num_frames", limits.max_frames), ("num_inference_steps", limits.max_steps),
                          ("height", limits.max_side), ("width", limits.max_side), ("fps", limits.max_fps),
                          ("min_guidance_scale", limits.max_guidance), ("max_guidance_scale", limits.max_guidance),
                          ("text_guidance_scale", limits.max_guidance), ("seed", SEED_MAX)):
            if p[name] is not None and p[name] > cap:
                raise InputError(f"{name} {p[name]} is more than this server allows ({cap}); ask for less")
        for name in ("seed", "min_guidance_scale", "max_guidance_scale", "text_guidance_scale"):
            if p[name] is not None and p[name] < 0:
                raise InputError(f"{name} must be >= 0, got {p[name]}")
        pipe.check_args(p["height"], p["width"], p["num_frames"], p["num_inference_steps"], p["fps"],
                        p["motion_bucket_id"], p["noise_aug_strength"], d.decode_chunk_size, p["sampler"],
                        p["guidance_ramp"], "video")
        if p["camera_move"] is not None:
            check_move(p["camera_move"])
        if p["camera_prior"] is not None and not 0.0 <= p["camera_prior"] <= 1.0:
            raise InputError(f"camera_prior must be in 0..1 (0 = off), got {p['camera_prior']}")
        return p

    def run(self, params: dict[str, Any], image: Path, output: Path, on_step: Callable[[int, int], None],
            on_camera: Callable[[list[str]], None]) -> list[str]:
        """Generate one job's video into `output`; returns the warnings the pipeline gave."""
        pipe = self.pipeline()
        args = dict(params)
        prompt, camera_prompt = args.pop("prompt"), args.pop("camera_prompt")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lines, prompt, camera_prompt = pipe.camera_report(prompt, camera_prompt, args["camera_move"],
                                                              args["camera_prior"])
            on_camera(lines)
            video = pipe(image, prompt, camera_prompt=camera_prompt, callback=on_step, **args)
        video.save(output)
        return list(dict.fromkeys(str(w.message) for w in caught))


def _parse(name: str, text: str | None, kind: type) -> Any:
    if text is None:
        return None
    if kind is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise InputError(f"{name} must be true or false, got {text[:20]!r}")
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InputError(f"{name} must be {what}, got {text[:20]!r}") from None
    if kind is float and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {text[:20]!r}")
    return value


# ------------------------------------------------------------------------------------------ queue


class JobQueue:
    """The data dir, the store and the worker thread."""

    def __init__(self, data_dir: str | Path, runner: Runner, limits: Limits = Limits()) -> None:
        self.root = Path(data_dir).resolve()
        self.runner = runner
        self.limits = limits
        try:
            (self.root / "jobs").mkdir(parents=True, exist_ok=True)
            (self.root / "uploads").mkdir(exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot use {self.root} as the data dir ({e.strerror}); "
                             "pass another --data-dir") from None
        self._lock_file = _lock_folder(self.root)
        self.store = JobStore(self.root / DB_NAME)
        self._recover()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancel = threading.Event()  # for the running job
        self._current: str | None = None
        self._thread: threading.Thread | None = None

    # -- files

    def job_dir(self, job_id: str) -> Path:
        """The job's folder, checked to lie inside the data dir."""
        path = (self.root / "jobs" / check_job_id(job_id)).resolve()
        if not path.is_relative_to(self.root / "jobs"):  # a symlinked folder pointing elsewhere
            raise NotFound(f"no files for job {job_id}")
        return path

    def video_path(self, job_id: str) -> Path:
        job = self.get(job_id)
        if job.state != "done":
            raise Conflict(f"job {job_id} is {job.state}; its video is ready when the job is done")
        path = (self.job_dir(job_id) / VIDEO_NAME).resolve()
        if not path.is_relative_to(self.root / "jobs") or not path.is_file():
            raise NotFound(f"the video of job {job_id} is missing from the data dir; submit the job again")
        return path

    def _recover(self) -> None:
        """Queue again what a crash left running; drop files no job owns and half-written ones."""
        for job_id in self.store.recover():
            log.warning("job %s was running when the server stopped; queued again", job_id)
        for tmp in (self.root / "uploads").iterdir():
            _remove(tmp)
        known = self.store.ids()
        queued = set(self.store.queued_ids())
        for folder in (self.root / "jobs").iterdir():
            if folder.name not in known:
                _remove(folder)
            elif folder.name in queued:  # a re-queued job starts clean: only its input stays
                for f in folder.iterdir():
                    if not INPUT_NAME.fullmatch(f.name):
                        _remove(f)

    # -- requests

    def submit(self, form: Mapping[str, str], data: bytes, filename: str) -> Job:
        """Check the parameters, then the image (the pipeline's own loader), then queue the job.
        Anything refused leaves no row and no file."""
        params = self.runner.check_params(form, self.limits)
        if len(data) > self.limits.max_upload_bytes:
            raise TooLarge(_too_big(len(data), self.limits.max_upload_bytes))
        job_id = uuid.uuid4().hex
        tmp = self.root / "uploads" / f"{job_id}.{secrets.token_hex(4)}"
        try:
            tmp.write_bytes(data)
            fmt = check_image(tmp, self.limits)
            folder = self.job_dir(job_id)
            folder.mkdir()
            image = f"input.{fmt}"
            os.replace(tmp, folder / image)
            try:
                self.store.add(job_id, params, image, _display_name(filename), self.limits.max_queued)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        finally:
            tmp.unlink(missing_ok=True)
        self._wake.set()
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        job = self.store.get(check_job_id(job_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def list(self, limit: int = 200) -> list[Job]:
        return self.store.list(limit)

    def queue_positions(self) -> dict[str, int]:
        """1 = the next to run."""
        return {job_id: i + 1 for i, job_id in enumerate(self.store.queued_ids())}

    def cancel(self, job_id: str) -> Job:
        if self.store.request_cancel(check_job_id(job_id)) == "running" and self._current == job_id:
            self._cancel.set()
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        folder = self.job_dir(job_id)
        self.store.delete(job_id)
        _remove(folder)

    # -- the worker

    @property
    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        assert self._thread is None, "the worker runs once"
        self._thread = threading.Thread(target=self._work, name="kinetograph-worker", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker at the running job's next step (the job is queued again), then let go
        of the data dir."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.store.close()
        self._lock_file.close()

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        self._current = job.id
        self._cancel.clear()
        if job.cancel_requested:
            self._cancel.set()
        folder = self.job_dir(job.id)
        output = folder / VIDEO_NAME
        log.info("job %s: running", job.id)

        def on_step(step: int, total: int) -> None:
            self.store.progress(job.id, step, total)
            if self._cancel.is_set():
                raise Cancelled
            if self._stop.is_set():
                raise Interrupted

        def on_camera(lines: list[str]) -> None:
            self.store.update(job.id, camera=lines)

        try:
            if not INPUT_NAME.fullmatch(job.image):
                raise InputError(f"the job's image name {job.image!r} is not one this server writes")
            found = self.runner.run(job.params, folder / job.image, output, on_step, on_camera)
            if self._cancel.is_set():  # asked after the last step: the user wants no video
                raise Cancelled
        except Cancelled:
            _remove(output)
            self.store.update(job.id, state="cancelled", finished=time.time())
            log.info("job %s: cancelled", job.id)
        except Interrupted:
            _remove(output)
            self.store.update(job.id, state="queued", step=0, total=0, started=None, updated=None,
                              runs=max(0, job.runs - 1))
            log.info("job %s: interrupted by shutdown; queued again", job.id)
        except Exception as e:
            _remove(output)
            if isinstance(e, KinetographError):
                message = str(e)
            else:
                log.exception("job %s failed", job.id)
                message = f"{type(e).__name__}: {e}"
            self.store.update(job.id, state="failed", finished=time.time(), error=message)
        else:
            self.store.update(job.id, state="done", finished=time.time(), warnings=found)
            log.info("job %s: done", job.id)
        finally:
            self._current = None


# ------------------------------------------------------------------------------------------ files


def check_image(path: Path, limits: Limits) -> str:
    """Refuse what the pipeline could not use, or should not try to decode; returns Pillow's
    format name (lowercase), the stored file's extension."""
    from PIL import Image, UnidentifiedImageError

    from kinetograph.pipeline.preprocess import load_image

    try:
        with Image.open(path) as im:  # the header only: the size is known before any decoding
            width, height, fmt = im.width, im.height, (im.format or "img").lower()
    except UnidentifiedImageError:
        raise InputError("the upload is not an image Pillow can read; "
                         "send a PNG, JPEG, WebP, BMP, GIF or TIFF") from None
    except Image.DecompressionBombError:  # Pillow's own cap, far above ours
        raise TooLarge(f"the image has more pixels than Pillow decodes safely; this server takes at most "
                       f"{limits.max_pixels / 1e6:.0f} MP: downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"the image cannot be read ({e}); re-export or re-download it") from None
    if width * height > limits.max_pixels:
        raise TooLarge(f"the image is {width}x{height} ({width * height / 1e6:.0f} MP); this server takes at most "
                       f"{limits.max_pixels / 1e6:.0f} MP: downscale it first")
    try:
        load_image(path)  # the pipeline's loader, decoding it all: a truncated file fails here
    except InputError as e:
        raise InputError(str(e).replace(str(path), "the uploaded image")) from None
    return re.sub(r"[^a-z0-9]", "", fmt)[:8] or "img"


def _too_big(size: int, limit: int) -> str:
    return (f"the upload is {size / 2**20:.1f} MB; this server takes images up to {limit / 2**20:.0f} MB: "
            "downscale it or save it as JPEG or WebP")


def _display_name(filename: str) -> str:
    """The user's file name for the job list: no folders, printable, short."""
    name = re.split(r"[/\\]", filename or "")[-1]
    return "".join(c for c in name if c.isprintable())[:120]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lock_folder(root: Path):
    """Hold `root/.lock` for the server's lifetime: two servers on one data dir would run (and
    re-queue) each other's jobs."""
    f = open(root / ".lock", "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; one server per data dir is on the operator
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InputError(f"another kinetograph server is using {root}; stop it or pass another --data-dir") from None
    return f


def job_json(job: Job, positions: Mapping[str, int], now: float | None = None) -> dict[str, Any]:
    """A job as the API shows it."""
    now = time.time() if now is None else now
    d = asdict(job)
    for key in ("seq", "image", "runs"):
        d.pop(key)
    d["progress"] = {"step": job.step, "total": job.total}
    d.pop("step"), d.pop("total")
    d["eta_seconds"] = None if (eta := job.eta(now)) is None else round(eta, 1)
    d["queue_position"] = positions.get(job.id)
    d["video_url"] = f"/api/jobs/{job.id}/video" if job.state == "done" else None
    return d
