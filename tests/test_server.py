"""The web server end to end on a tiny random checkpoint: jobs run, persist across restarts,
cancel and delete; every bad upload, parameter and path is refused with no job and no file."""

from __future__ import annotations

import io
import re
import socket
import sqlite3
import struct
import threading
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import randomize_
from fastapi.testclient import TestClient
from PIL import Image

from kinetograph.cli import main
from kinetograph.data.camera_motion import CANONICAL_CAPTIONS
from kinetograph.io.checkpoint import save_original
from kinetograph.models.svd import SVD
from kinetograph.pipeline.image_to_video import CameraReading, ImageToVideo, Video
from kinetograph.presets import PRESETS
from kinetograph.server.app import create_app
from kinetograph.server.jobs import MAX_RUNS, JobQueue, JobStore, Limits, Runner

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SMALL = {"num_frames": "5", "num_inference_steps": "2", "height": "64", "width": "128", "seed": "7"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = randomize_(SVD(PRESETS["tiny"].model), seed=4).eval()
    return save_original(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny")


def serve(checkpoint, data_dir, *, worker=True, limits=Limits()) -> TestClient:
    return TestClient(create_app(JobQueue(data_dir, Runner(checkpoint), limits), start_worker=worker))


def submit(client, image: bytes | Path = ASSETS / "chelsea.jpg", name="photo.jpg", **fields):
    data = image.read_bytes() if isinstance(image, Path) else image
    return client.post("/api/jobs", files={"image": (name, data, "application/octet-stream")},
                       data={**SMALL, **fields})


def wait(client, job_id, states=("done", "failed", "cancelled"), timeout=60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")


def decode(mp4: bytes) -> tuple[np.ndarray, str]:
    with av.open(io.BytesIO(mp4)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        return frames, stream.codec_context.name


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("jobs.sqlite3", ".lock")
                  and not p.name.startswith("jobs.sqlite3-"))


# ------------------------------------------------------------------------------------ running


def test_job_runs_to_done_and_its_video_is_the_pipelines(checkpoint, tmp_path, monkeypatch):
    saved = []
    original_save = Video.save
    monkeypatch.setattr(Video, "save", lambda self, path: (saved.append(self.frames), original_save(self, path))[1])
    with serve(checkpoint, tmp_path / "data") as client:
        res = submit(client)
        assert res.status_code == 201, res.text
        job = wait(client, res.json()["id"])
        assert job["state"] == "done", job["error"]
        assert job["progress"] == {"step": 2, "total": 2} and job["error"] is None
        assert job["params"]["num_frames"] == 5 and job["params"]["seed"] == 7
        assert job["params"]["motion_bucket_id"] == PRESETS["tiny"].sampling.motion_bucket_id  # the preset's
        res = client.get(job["video_url"])
        assert res.status_code == 200 and res.headers["content-type"] == "video/mp4"
        frames, codec = decode(res.content)
        assert codec == "h264" and frames.shape == (5, 64, 128, 3)

        # The same settings straight through the pipeline give the same frames, exactly.
        pipe = ImageToVideo.from_checkpoint(checkpoint)
        direct = pipe(ASSETS / "chelsea.jpg", num_frames=5, num_inference_steps=2, height=64, width=128, seed=7).frames
        assert len(saved) == 1 and np.array_equal(saved[0], direct)
        # ... and the served MP4 is those frames as `generate` writes them (random weights make
        # noise, which H.264 cannot keep exactly).
        reference = decode(Video(direct, fps=7.0).save(tmp_path / "direct.mp4").read_bytes())[0]
        assert np.abs(frames.astype(int) - reference).mean() < 0.5

        folder = tmp_path / "data" / "jobs" / job["id"]
        assert sorted(p.name for p in folder.iterdir()) == ["input.jpeg", "video.mp4"]
        assert client.delete(f"/api/jobs/{job['id']}").json() == {"id": job["id"], "deleted": True}
        assert not folder.exists() and client.get(f"/api/jobs/{job['id']}").status_code == 404
        assert client.get(job["video_url"]).status_code == 404


def test_the_job_says_what_the_camera_head_read_as_the_cli_does(checkpoint, tmp_path, monkeypatch, capsys):
    reading = CameraReading({"static": 0.02, "pan_left": 0.02, "pan_right": 0.9, "tilt_up": 0.02, "tilt_down": 0.02,
                             "zoom_in": 0.01, "zoom_out": 0.01}, named=0.95)
    monkeypatch.setattr(ImageToVideo, "camera_reading", lambda self, prompt: reading if prompt else None)
    prompt = "slowly sweep across to the right"
    argv = ["generate", str(ASSETS / "chelsea.jpg"), "-c", str(checkpoint), "-o", str(tmp_path / "cli.gif"),
            "--prompt", prompt, "--frames", "2", "--steps", "1", "--device", "cpu"]
    assert main(argv) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("camera")]
    with serve(checkpoint, tmp_path / "data") as client:
        job = wait(client, submit(client, prompt=prompt, num_frames="2", num_inference_steps="1").json()["id"])
    assert job["state"] == "done", job["error"]
    assert job["camera"] == said == [
        f"camera: the prompt reads as pan right (90%); sampling with {CANONICAL_CAPTIONS['pan_right']!r}"]
    assert any("prompt is ignored" in w for w in job["warnings"])  # the text-blind tiny model


# -------------------------------------------------------------------------------- persistence


def test_jobs_persist_and_a_crashed_run_is_queued_again(checkpoint, tmp_path):
    data = tmp_path / "data"
    with serve(checkpoint, data, worker=False) as client:  # a server whose worker never runs: jobs wait
        first, second, third = (submit(client, seed=str(s)).json() for s in (1, 2, 3))
        assert [first["queue_position"], second["queue_position"], third["queue_position"]] == [1, 2, 3]
        with pytest.raises(Exception, match="another kinetograph server is using"):
            JobQueue(data, Runner(checkpoint))  # one server per data dir
    # A crash during `first` (left running, a half-written temp video beside it), and during
    # `third` for the MAX_RUNS-th time; a folder no job owns.
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET state = 'running', runs = 1, step = 1, total = 2 WHERE id = ?", (first["id"],))
        db.execute("UPDATE jobs SET state = 'running', runs = ? WHERE id = ?", (MAX_RUNS, third["id"]))
    (data / "jobs" / first["id"] / ".video.mp4.1234abcd.part").write_bytes(b"half a video")
    (data / "jobs" / ("ab" * 16)).mkdir()

    with serve(checkpoint, data) as client:
        done = [wait(client, j["id"]) for j in (first, second)]
        failed = client.get(f"/api/jobs/{third['id']}").json()
        listed = [j["id"] for j in client.get("/api/jobs").json()["jobs"]]
        video = client.get(done[0]["video_url"])
    assert [j["state"] for j in done] == ["done", "done"]
    assert done[0]["started"] < done[1]["started"]  # in creation order
    assert failed["state"] == "failed" and "stopped during this job" in failed["error"]
    assert listed == [third["id"], second["id"], first["id"]]  # newest first
    assert decode(video.content)[0].shape == (5, 64, 128, 3)
    assert not (data / "jobs" / ("ab" * 16)).exists()
    assert sorted(p.name for p in (data / "jobs" / first["id"]).iterdir()) == ["input.jpeg", "video.mp4"]


# ---------------------------------------------------------------------------------- refusals


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file that claims to be width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_bad_uploads_and_parameters_are_refused_with_no_job_and_no_file(checkpoint, tmp_path):
    jpeg = (ASSETS / "chelsea.jpg").read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, format="PNG")  # ~270 kB: over the 100 kB limit below
    cases = [  # (image bytes, fields, status, words the detail must hold)
        (b"this is not an image", {}, 400, "not an image"),
        (jpeg[: len(jpeg) // 2], {}, 400, "truncated or corrupt"),
        (big.getvalue(), {}, 413, "this server takes images up to"),
        (png_header(9000, 9000), {}, 413, "9000x9000"),
        (png_header(100_000, 100_000), {}, 413, "downscale"),
        (jpeg, {"motion_bucket_id": "300"}, 400, "motion_bucket_id must be in 0..255"),
        (jpeg, {"num_inference_steps": "0"}, 400, "num_inference_steps must be >= 1"),
        (jpeg, {"num_inference_steps": "10000"}, 400, "more than this server allows"),
        (jpeg, {"sampler": "magic"}, 400, "unknown sampler 'magic'; choose one of euler"),
        (jpeg, {"camera_move": "barrel_roll"}, 400, "unknown camera move 'barrel_roll'; choose one of static"),
        (jpeg, {"camera_prior": "1.5"}, 400, "camera_prior must be in 0..1"),
        (jpeg, {"height": "66"}, 400, "not a multiple of 4"),
        (jpeg, {"num_frames": "five"}, 400, "num_frames must be a whole number"),
        (jpeg, {"noise_aug_strength": "nan"}, 400, "finite"),
        (jpeg, {"seed": "-1"}, 400, "seed must be >= 0"),
        (jpeg, {"deflicker": "maybe"}, 400, "deflicker must be true or false"),
        (jpeg, {"prompt": "x" * 1001}, 400, "at most 1000"),
        (jpeg, {"checkpoint": "/etc/passwd"}, 400, "unknown field 'checkpoint'"),
    ]
    data = tmp_path / "data"
    limits = Limits(max_upload_bytes=100_000, max_pixels=64_000_000)
    with serve(checkpoint, data, worker=False, limits=limits) as client:
        for image, fields, status, words in cases:
            res = submit(client, image, **fields)
            detail = res.json()["detail"]
            assert res.status_code == status and words in detail, (fields, res.text)
            assert isinstance(detail, str) and "\n" not in detail and str(tmp_path) not in detail
        res = client.post("/api/jobs", data=SMALL, files={"image": (None, "photo.jpg")})  # a text field
        assert res.status_code == 400 and "no image" in res.json()["detail"]
        res = client.post("/api/jobs", data=SMALL, files={"image": ("a.jpg", jpeg), "seed": ("s.txt", b"1")})
        assert res.status_code == 400 and "only 'image' is a file" in res.json()["detail"]
        res = client.post("/api/jobs", json={"prompt": "hi"})
        assert res.status_code == 400 and "multipart/form-data" in res.json()["detail"]
        assert client.get("/api/jobs").json() == {"jobs": []}
    assert files_under(data) == []


@pytest.mark.parametrize("mode, fmt, stored", [
    ("RGB", "PNG", "input.png"), ("RGB", "JPEG", "input.jpeg"), ("RGB", "WEBP", "input.webp"),
    ("L", "PNG", "input.png"), ("RGBA", "PNG", "input.png"), ("P", "GIF", "input.gif"), ("I;16", "PNG", "input.png"),
])
def test_common_image_formats_are_accepted(checkpoint, tmp_path, mode, fmt, stored):
    photo = Image.open(ASSETS / "coffee.jpg").convert("RGBA" if mode == "RGBA" else "RGB").resize((96, 64))
    photo = photo.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(photo.convert("L"), dtype=np.uint16) * 257))
    buf = io.BytesIO()
    photo.save(buf, format=fmt)
    with serve(checkpoint, tmp_path / "data", worker=False) as client:
        res = submit(client, buf.getvalue(), name="../../my photo")
        assert res.status_code == 201, res.text
        job = res.json()
    assert job["state"] == "queued" and job["image_name"] == "my photo"  # shown; never a path
    assert [p.name for p in (tmp_path / "data" / "jobs" / job["id"]).iterdir()] == [stored]


def test_paths_never_leave_the_data_dir(checkpoint, tmp_path):
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "video.mp4").write_bytes(b"secret")
    with serve(checkpoint, data, worker=False) as client:
        job = submit(client).json()
        for path in ["/api/jobs/../../etc/passwd", "/api/jobs/..%2F..%2Fetc%2Fpasswd", "/api/jobs/%2e%2e",
                     "/api/jobs/" + "g" * 32, "/api/jobs/" + job["id"].upper(), "/api/jobs/" + "a" * 31,
                     "/api/jobs/..%2F..%2Fetc%2Fpasswd/video", "/api/jobs/" + "0" * 32 + "/video",
                     "/static/../jobs.sqlite3", "/static/..%2Fjobs.sqlite3", "/static/%2e%2e/jobs.sqlite3"]:
            res = client.get(path)
            assert res.status_code in (400, 404), (path, res.status_code)
            assert b"root:" not in res.content and b"SQLite" not in res.content
        for path in ["/api/jobs/..%2F..%2Fetc", "/api/jobs/" + "z" * 32]:
            assert client.delete(path).status_code in (400, 404, 405)
            assert client.post(path + "/cancel").status_code in (400, 404)
        assert client.get(f"/api/jobs/{job['id']}/video").status_code == 409  # queued: no video yet

        # A job folder replaced by a link out of the data dir is not followed.
        JobStore(data / "jobs.sqlite3").update(job["id"], state="done")
        folder = data / "jobs" / job["id"]
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        folder.symlink_to(outside, target_is_directory=True)
        res = client.get(f"/api/jobs/{job['id']}/video")
        assert res.status_code == 404 and b"secret" not in res.content
    assert (outside / "video.mp4").read_bytes() == b"secret"


def test_another_sites_page_cannot_change_jobs(checkpoint, tmp_path):
    with serve(checkpoint, tmp_path / "data", worker=False) as client:
        job = submit(client).json()
        res = client.post(f"/api/jobs/{job['id']}/cancel", headers={"Origin": "https://evil.example"})
        assert res.status_code == 403 and client.get(f"/api/jobs/{job['id']}").json()["state"] == "queued"
        res = client.post(f"/api/jobs/{job['id']}/cancel", headers={"Origin": "http://testserver"})
        assert res.status_code == 200 and res.json()["state"] == "cancelled"


# ------------------------------------------------------------------------------ cancel, delete


def test_cancel_a_queued_and_a_running_job(checkpoint, tmp_path, monkeypatch):
    data = tmp_path / "data"
    with serve(checkpoint, data, worker=False) as client:
        queued = submit(client).json()
        res = client.post(f"/api/jobs/{queued['id']}/cancel")
        assert res.status_code == 200 and res.json()["state"] == "cancelled"
        assert client.post(f"/api/jobs/{queued['id']}/cancel").status_code == 409  # already cancelled
        assert client.delete(f"/api/jobs/{queued['id']}").status_code == 200
        assert files_under(data) == []

    at_step, go = threading.Event(), threading.Event()
    original = JobStore.progress

    def progress(self, job_id, step, total):  # hold the worker inside step 1 until the test has cancelled
        original(self, job_id, step, total)
        if step == 1:
            at_step.set()
            go.wait(30)

    monkeypatch.setattr(JobStore, "progress", progress)
    with serve(checkpoint, data) as client:
        job = submit(client, num_inference_steps="20").json()
        assert at_step.wait(60)
        running = client.get(f"/api/jobs/{job['id']}").json()
        assert running["state"] == "running" and running["progress"] == {"step": 1, "total": 20}
        assert running["eta_seconds"] is not None and running["eta_seconds"] >= 0
        assert client.delete(f"/api/jobs/{job['id']}").status_code == 409  # running: cancel first
        assert client.post(f"/api/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
        go.set()
        done = wait(client, job["id"])
        assert done["state"] == "cancelled" and done["progress"]["step"] == 1 and done["video_url"] is None
        assert client.get(f"/api/jobs/{job['id']}/video").status_code == 409
        assert [p.name for p in (data / "jobs" / job["id"]).iterdir()] == ["input.jpeg"]  # no video, no part
        assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
        assert not (data / "jobs" / job["id"]).exists()


# --------------------------------------------------------------------------------- page, CLI


class Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_page_is_served_with_local_assets_only(checkpoint, tmp_path):
    with serve(checkpoint, tmp_path / "data", worker=False) as client:
        res = client.get("/")
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in res.headers["content-security-policy"]
        parser = Assets()
        parser.feed(res.text)
        assert parser.urls and all(u.startswith("/static/") for u in parser.urls), parser.urls
        for url in parser.urls:
            asset = client.get(url)
            assert asset.status_code == 200 and not re.search(r"https?://|//cdn|@import", asset.text), url
        info = client.get("/api/info").json()
        assert info["preset"] == "tiny" and info["defaults"]["num_frames"] == 4 and info["size_multiple"] == 4
        assert client.get("/api/health").json()["worker"] is False


def test_serve_command(checkpoint, tmp_path, capsys):
    with socket.socket() as s:  # a port free now
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--checkpoint", "--host", "--port", "--data-dir"))
    for argv, words in [(["--port", "70000"], "--port 70000"),
                        (["-c", str(tmp_path / "missing.safetensors"), "--port", port], "checkpoint not found")]:
        assert main(["serve", *argv, "--data-dir", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()
