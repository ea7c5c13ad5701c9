"""Motion score on generated camera moves over real photos, and the motion bucket map."""

import json
from pathlib import Path

import numpy as np
import pytest

from kinetograph.data.camera_motion import CameraMotionConfig, CameraMove, render
from kinetograph.data.curation.motion import MotionBucketMap, clip_motion_score
from kinetograph.data.curation.pipeline import AnalysisConfig, analyse_source
from kinetograph.data.sources import load_photo
from kinetograph.io.video import encode_mp4_bytes

CFG = CameraMotionConfig(height=96, width=160, num_frames=7, fps=8.0)


def _pan(photo: str, speed: float, kind: str = "pan_right") -> np.ndarray:
    move = CameraMove("static" if speed == 0 else kind, speed)
    return render(load_photo(photo), move, CFG, np.random.default_rng(0))


def test_score_ranks_static_slow_fast_pans():
    scores = [clip_motion_score(_pan("stereo_motorcycle", v), CFG.fps) for v in (0.0, 3.0, 15.0)]
    assert scores[0] < scores[1] < scores[2], scores
    assert scores[0] < 0.1  # a still photo does not move


@pytest.mark.parametrize("kind", ["pan_left", "tilt_down", "zoom_in", "zoom_out"])
def test_score_measures_the_true_speed(kind):
    # On a textured photo Farneback recovers the rendered speed (% width/s) within 15 %.
    for speed in (4.0, 12.0):
        s = clip_motion_score(_pan("chelsea", speed, kind), CFG.fps)
        assert s == pytest.approx(speed, rel=0.15), (kind, speed, s)


def test_pipeline_scores_a_file_and_ranks_it(tmp_path: Path):
    # The same measurement through the file path: decode, downscale, per-frame flow.
    out = []
    for v in (0.0, 3.0, 15.0):
        p = tmp_path / f"pan{v}.mp4"
        p.write_bytes(encode_mp4_bytes(_pan("coffee", v), CFG.fps))
        entry = analyse_source(str(p), AnalysisConfig(analysis_width=160, min_clip_s=0.5))
        (clip,) = entry["clips"]
        out.append(clip["motion_score"])
    assert out[0] < out[1] < out[2], out
    assert out[2] == pytest.approx(15.0, rel=0.2)


def test_default_map_hand_values_and_monotonic():
    m = MotionBucketMap()
    assert m.bucket(0.0) == 0 and m.bucket(1.0) == 32 and m.bucket(8.0) == 128 and m.bucket(1e6) == 255
    assert m.bucket(0.5) == 16 and m.bucket(12.0) == pytest.approx(32 * (1 + np.log2(12)), abs=0.6)
    x = np.linspace(0, 300, 3001)
    b = np.array([m.bucket(v) for v in x])
    assert np.all(np.diff(b) >= 0) and b.min() == 0 and b.max() == 255
    # inverse: the speed for bucket 127 maps back to 127
    assert m.bucket(m.score(127)) == 127 and m.score(127) == pytest.approx(2 ** (127 / 32 - 1), rel=3e-3)


def test_fitted_map_uses_quantiles_and_is_monotonic(tmp_path: Path):
    rng = np.random.default_rng(0)
    scores = rng.lognormal(mean=1.5, sigma=1.0, size=500)
    m = MotionBucketMap.fit(scores)
    assert m.method == "quantile"
    b = np.array([m.bucket(v) for v in np.sort(scores)])
    assert np.all(np.diff(b) >= 0)
    # Quantile calibration: the median clip gets the middle bucket, the extremes the ends.
    assert m.bucket(float(np.median(scores))) == pytest.approx(127.5, abs=1)
    assert m.bucket(scores.max()) == 255 and m.bucket(0.0) == 0
    # Saved beside the data and read back identically.
    m.save(tmp_path / "motion_buckets.json")
    assert MotionBucketMap.load(tmp_path / "motion_buckets.json") == m
    assert "units" in json.loads((tmp_path / "motion_buckets.json").read_text())


def test_fit_on_tiny_corpus_falls_back_to_default():
    assert MotionBucketMap.fit([1.0, 2.0, 3.0]) == MotionBucketMap()


def test_fit_with_many_equal_scores_stays_valid():
    m = MotionBucketMap.fit([0.0] * 100 + list(np.linspace(1, 50, 40)))
    b = [m.bucket(v) for v in np.linspace(0, 60, 200)]
    assert np.all(np.diff(b) >= 0)
