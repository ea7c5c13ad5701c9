"""Control fidelity (accuracy, Spearman) and the CLIP scores with hand-made embedding functions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata as scipy_rankdata
from scipy.stats import spearmanr

from kinetograph.errors import InputError
from kinetograph.eval.clip_score import ClipEmbedders, clip_consistency, clip_score
from kinetograph.eval.control import ControlCase, control_fidelity, rankdata, spearman
from kinetograph.eval.motion import MotionClass

L, R, S, ZI = MotionClass.LEFT, MotionClass.RIGHT, MotionClass.STATIC, MotionClass.ZOOM_IN


def test_rankdata_average_ties_hand_and_scipy():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    x = np.random.default_rng(0).integers(0, 5, 40)
    assert np.allclose(rankdata(x), scipy_rankdata(x))


def test_spearman_hand_derived():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1,2,3; y = 1,3,2: rho = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert spearman([1, 2, 3], [5, 9, 7]) == pytest.approx(0.5)
    assert spearman([1, 2], [1, 2]) is None  # too few
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.choice([40, 127, 220], 30)
    y = x / 100 + rng.normal(0, 1, 30)
    y[:5] = y[5]  # ties on both sides
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_control_fidelity_counts():
    cases = [
        ControlCase(L, L, 40, 0.5, "a"),
        ControlCase(L, L, 127, 1.0, "a"),
        ControlCase(L, R, 220, 2.0, "a"),  # wrong direction
        ControlCase(S, S, 40, 0.0, "b"),
        ControlCase(ZI, S, 127, 0.1, "b"),  # no motion where a zoom was asked
        ControlCase(None, R, 220, 3.0, "b"),  # no expectation: not scored, still ranked
    ]
    c = control_fidelity(cases)
    assert c.n_scored == 5 and c.accuracy == pytest.approx(3 / 5)
    assert (c.per_class["left"].n, c.per_class["left"].correct) == (3, 2)
    assert c.per_class["zoom_in"].accuracy == 0.0
    assert c.confusion == {
        "left": {"left": 2, "right": 1},
        "static": {"static": 1},
        "zoom_in": {"static": 1},
    }
    assert c.spearman == pytest.approx(
        spearmanr([40, 127, 220, 40, 127, 220], [0.5, 1.0, 2.0, 0.0, 0.1, 3.0]).statistic
    )
    assert c.spearman_within == pytest.approx(1.0) and c.n_groups == 2


def test_direction_accuracy_reads_slow_moves_by_their_direction():
    cases = [
        ControlCase(L, S, 40, 0.1, "a", direction=L),  # too slow, the right way: counts
        ControlCase(L, S, 40, 0.1, "a", direction=R),  # too slow, the wrong way: does not
        ControlCase(S, S, 40, 0.0, "a", direction=L),  # a static prompt is scored on the label
        ControlCase(S, L, 40, 1.0, "a", direction=L),  # a real move under a static prompt: wrong
        ControlCase(ZI, ZI, 40, 1.0, "a"),  # no direction recorded: the label is used
    ]
    c = control_fidelity(cases)
    assert c.accuracy == pytest.approx(2 / 5)
    assert c.direction_accuracy == pytest.approx(3 / 5)


def test_control_fidelity_without_expectations():
    c = control_fidelity([ControlCase(None, S, 40, 0.0, "g"), ControlCase(None, L, 127, 1.0, "g")])
    assert c.accuracy is None and c.direction_accuracy is None and c.n_scored == 0 and c.per_class == {}
    assert c.spearman is None and c.spearman_within is None and c.n_groups == 0


# --- CLIP scores with hand-made towers ----------------------------------------------------------


def colour_tower(frames: np.ndarray) -> np.ndarray:
    """A stand-in image tower: the mean RGB of each frame (n, 3)."""
    return frames.reshape(len(frames), -1, 3).mean(axis=1)


def text_tower(prompts):
    table = {
        "red": [1.0, 0.0, 0.0],
        "green": [0.0, 1.0, 0.0],
        "grey": [1.0, 1.0, 1.0],
        "anti": [-1.0, 0.0, 0.0],
    }
    return np.array([table[p] for p in prompts])


def test_clip_score_hand_derived():
    embed = ClipEmbedders("toy", colour_tower, text_tower)
    red = np.zeros((2, 4, 4, 3), np.uint8)
    red[..., 0] = 200
    assert clip_score(red, "red", embed) == pytest.approx(100.0)
    assert clip_score(red, "green", embed) == pytest.approx(0.0)
    assert clip_score(red, "grey", embed) == pytest.approx(100 / np.sqrt(3))
    assert clip_score(red, "anti", embed) == 0.0  # negative cosines clip to 0
    mixed = red.copy()
    mixed[1] = 0
    mixed[1, ..., 1] = 200  # frame 1 green: scores 100 and 0
    assert clip_score(mixed, "red", embed) == pytest.approx(50.0)
    assert clip_consistency(mixed, embed) == pytest.approx(0.0)
    assert clip_consistency(red, embed) == pytest.approx(1.0)


def test_clip_checks_embedding_shapes_and_text_tower():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(InputError, match="text tower"):
        clip_score(frames, "red", ClipEmbedders("image only", colour_tower))
    bad = ClipEmbedders("bad", lambda f: np.ones((1, 3)), text_tower)
    with pytest.raises(InputError, match=r"\(3, d\)"):
        clip_consistency(frames, bad)
