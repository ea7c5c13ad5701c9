"""`data build` (tiny recipe) and the ClipDataset that reads its shards."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kinetograph.data.build import RECIPES, build
from kinetograph.data.curation.motion import MotionBucketMap
from kinetograph.data.datasets import ClipDataset, SampleConfig, collate, resize_crop, sample_indices
from kinetograph.data.shards import ShardWriter, index_shard, read_member
from kinetograph.errors import InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    build(out, "tiny", seed=0, workers=1, progress=False)
    return out


def test_build_writes_manifest_shards_and_bucket_map(tiny: Path):
    rows = [json.loads(x) for x in (tiny / "manifest.jsonl").read_text().splitlines()]
    meta = json.loads((tiny / "dataset.json").read_text())
    recipe = RECIPES["tiny"]
    assert meta["counts"] == {"video": 1, "camera": 2 * 13, "image": 2}
    bucket_map = MotionBucketMap.load(tiny / "motion_buckets.json")
    for r in rows:
        assert (tiny / r["shard"]).is_file()
        assert r["caption"]  # every sample of the project's own data has a caption
        if r["kind"] == "camera":
            # The true speed drives the bucket, through the saved map.
            assert r["motion_bucket"] == bucket_map.bucket(r["move"]["speed"])
            assert r["num_frames"] == recipe.camera.num_frames
    static = [r for r in rows if r["kind"] == "camera" and r["move"]["kind"] == "static"]
    fast = [r for r in rows if r["kind"] == "camera" and r["move"]["speed_class"] == "fast"]
    slow = [r for r in rows if r["kind"] == "camera" and r["move"]["speed_class"] == "slow"]
    assert max(r["motion_bucket"] for r in static) == 0
    assert max(r["motion_bucket"] for r in slow) < min(r["motion_bucket"] for r in fast)
    # Shards are plain tars (webdataset-compatible): key.ext members.
    with tarfile.open(tiny / rows[0]["shard"]) as t:
        names = t.getnames()
    assert f"{rows[0]['key']}.mp4" in names and f"{rows[0]['key']}.json" in names


def test_build_is_deterministic(tiny: Path, tmp_path: Path):
    build(tmp_path, "tiny", seed=0, workers=2, progress=False)
    # Byte-identical: generated frames, captions, mp4 encodes and tar headers are all seeded/fixed,
    # and two processes rendering the photos give what one gave.
    for name in ("manifest.jsonl", "camera/camera-000000.tar", "images/images-000000.tar", "real/shards/clips-000000.tar"):
        assert (tiny / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_dataset_items(tiny: Path):
    cfg = SampleConfig(num_frames=4, fps=4.0, height=32, width=48)
    ds = ClipDataset(tiny, cfg, seed=0)
    assert len(ds) == 1 + 26 + 2
    kinds = {}
    for i in range(len(ds)):
        it = ds[i]
        kinds[it["kind"]] = it
        t = 1 if it["kind"] == "image" else 4
        assert it["video"].shape == (t, 3, 32, 48) and it["video"].dtype == torch.float32
        assert -1.0 <= it["video"].min() and it["video"].max() <= 1.0
        assert isinstance(it["caption"], str) and it["caption"]
    assert set(kinds) == {"video", "camera", "image"}
    # Camera clips: 6 frames at 8 fps; 4 frames at 4 fps would need 7, so the stride shrinks to 5/3.
    assert kinds["camera"]["fps"] == pytest.approx(8 * 3 / 5)
    # Real clip: 25 fps -> stride 6.25 -> 4.0 fps exactly.
    assert kinds["video"]["fps"] == pytest.approx(4.0)
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 4, 3, 32, 48) and batch["motion_bucket"].dtype == torch.int64
    # a zoom's window has to be centred on the zoom's fixed point; nothing else pins its window
    for i, row in enumerate(ds.rows):
        zoom = row.get("kind") == "camera" and row["move"]["kind"].startswith("zoom")
        assert ds[i]["window_centre"] == ((0.5, 0.5) if zoom else None)
    assert any(r.get("kind") == "camera" and r["move"]["kind"] == "zoom_in" for r in ds.rows)
    assert batch["window_centre"] == [ds[0]["window_centre"], ds[1]["window_centre"]]


def test_dataset_reproducible_and_epoch_changes_sampling(tiny: Path):
    cfg = SampleConfig(num_frames=2, fps=8.0, height=32, width=32)
    a, b = ClipDataset(tiny, cfg, seed=1), ClipDataset(tiny, cfg, seed=1)
    i = next(k for k in range(len(a)) if a.rows[k]["kind"] == "image")
    assert torch.equal(a[i]["video"], b[i]["video"])
    crops = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        crops.add(a[i]["video"].numpy().tobytes())
    assert len(crops) > 1  # random crops/flips differ across epochs


def test_paraphrased_captions_change_with_the_epoch_and_keep_the_move(tiny: Path):
    """data.paraphrase_captions: camera clips get a new caption of their own move each epoch,
    reproducibly, with the frames unchanged; other kinds keep their caption."""
    from kinetograph.eval.prompts import expected_motion

    plain = ClipDataset(tiny, SampleConfig(num_frames=4, fps=4.0, height=32, width=32), seed=2)
    cfg = SampleConfig(num_frames=4, fps=4.0, height=32, width=32, paraphrase_captions=True)
    a, b = ClipDataset(tiny, cfg, seed=2), ClipDataset(tiny, cfg, seed=2)
    moving = [k for k, r in enumerate(a.rows) if r["kind"] == "camera" and r["move"]["kind"] != "static"]
    assert moving
    names = {"pan_left": "left", "pan_right": "right", "tilt_up": "up", "tilt_down": "down"}
    for i in moving:
        captions = set()
        for epoch in range(4):
            a.set_epoch(epoch), b.set_epoch(epoch), plain.set_epoch(epoch)
            item, again, unchanged = a[i], b[i], plain[i]
            assert item["caption"] == again["caption"]
            assert torch.equal(item["video"], unchanged["video"])
            kind = a.rows[i]["move"]["kind"]
            assert expected_motion(item["caption"]).value == names.get(kind, kind), item["caption"]
            captions.add(item["caption"])
        assert len(captions) > 1
    other = next(k for k, r in enumerate(a.rows) if r["kind"] != "camera")
    assert a[other]["caption"] == plain[other]["caption"]
    # a manifest from before subjects were recorded: a clear error, not a KeyError mid-training
    old = tiny.parent / "old"
    old.mkdir(exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "subject"} for r in a.rows]
    (old / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="rebuild"):
        ClipDataset(old, cfg)


def test_dataset_filters_kinds_and_video_frames_match_shard(tiny: Path):
    cfg = SampleConfig(num_frames=6, fps=8.0, height=64, width=96, kinds=("camera",), random_crop=False)
    ds = ClipDataset(tiny, cfg)
    assert {r["kind"] for r in ds.rows} == {"camera"}
    it = ds[0]
    # Native fps, all frames, native size, centre crop: exactly the decoded shard clip.
    from kinetograph.io.video import decode_mp4_bytes

    row = ds.rows[0]
    m = index_shard(tiny / row["shard"])[row["key"]]["mp4"]
    frames, _ = decode_mp4_bytes(read_member(tiny / row["shard"], m))
    expect = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(it["video"], expect)
    with pytest.raises(InputError, match="no samples"):
        ClipDataset(tiny, SampleConfig(kinds=("nothing",)))


def test_sample_indices_by_hand():
    rng = np.random.default_rng(0)
    idx, fps = sample_indices(100, 30.0, SampleConfig(num_frames=5, fps=10.0), rng)
    assert fps == 10.0 and np.all(np.diff(idx) == 3)
    idx, fps = sample_indices(3, 8.0, SampleConfig(num_frames=5, fps=8.0), rng)
    assert list(idx) == [0, 1, 2, 2, 2] and fps == 8.0  # too short: last frame repeats


def test_resize_crop_centre_by_hand():
    f = np.zeros((1, 10, 20, 3), np.uint8)
    f[:, :, 5:15] = 255  # a white band in the middle 10 columns
    out = resize_crop(f, 10, 10, None)  # already covers 10x10: centre crop = the band
    assert out.shape == (1, 10, 10, 3) and out.min() == 255


def test_shard_writer_rolls_over(tmp_path: Path):
    with ShardWriter(tmp_path, "x", max_count=2) as w:
        for k in range(5):
            w.write(f"s{k}", {"txt": f"hello {k}", "json": {"k": k}})
    assert w.shards == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]
    idx = index_shard(tmp_path / "x-000001.tar")
    assert list(idx) == ["s2", "s3"]
    assert read_member(tmp_path / "x-000001.tar", idx["s3"]["txt"]) == b"hello 3"


def test_cli_build(tmp_path: Path):
    from typer.testing import CliRunner

    from kinetograph.data.cli import app

    res = CliRunner().invoke(app, ["build", "--recipe", "nope", "-o", str(tmp_path)])
    assert isinstance(res.exception, InputError) and "recipe" in str(res.exception)
