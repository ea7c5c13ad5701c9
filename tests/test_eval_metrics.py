"""Metric tests on clips with known ground truth, built from real scikit-image photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from skimage.metrics import structural_similarity

from kinetograph.errors import InputError
from kinetograph.eval.clips import fit_image, luminance
from kinetograph.eval.evaluate import evaluate_video
from kinetograph.eval.fidelity import first_frame_fidelity, psnr, ssim
from kinetograph.eval.flow import FlowConfig, consistent, video_flow
from kinetograph.eval.motion import (
    MotionClass,
    camera_motion,
    classify,
    fit_similarity,
    mean_flow_magnitude,
)
from kinetograph.eval.synthetic import camera_clip
from kinetograph.eval.temporal import Flicker, flicker, warping_error
from kinetograph.flow import farneback

SIZE = (64, 96)  # (h, w): small frames keep the tests fast


def photo(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)


def shifted_crops(image: np.ndarray, dx: int, dy: int, frames: int, size=SIZE) -> np.ndarray:
    """Crops whose window moves by (dx, dy) per frame: the content moves by (-dx, -dy)."""
    h, w = size
    x0, y0 = 100, 100
    return np.stack(
        [image[y0 + k * dy : y0 + k * dy + h, x0 + k * dx : x0 + k * dx + w] for k in range(frames)]
    )


# --- first-frame fidelity ---------------------------------------------------------------------


def test_psnr_hand_derived():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + np.uint8(5)  # every value off by 5: MSE 25
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 25), abs=1e-9)
    assert psnr(a, a) == float("inf")


def test_ssim_matches_the_paper_settings_and_orders_degradations():
    a = fit_image(photo("astronaut"), SIZE)
    rng = np.random.default_rng(0)
    light = np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    reference = structural_similarity(
        a,
        light,
        channel_axis=-1,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(a, light) == pytest.approx(reference, abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0)
    assert 1.0 > ssim(a, light) > ssim(a, heavy)


def test_fit_image_covers_and_center_crops():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255  # white middle third
    fitted = fit_image(image, (50, 50))  # cover scale 0.5: 50x150, crop the middle 50 columns
    assert fitted.shape == (50, 50, 3)
    assert fitted[:, 3:-3].min() > 250


def test_first_frame_fidelity_at_output_size():
    image = photo("chelsea")  # 300x451, a different aspect from the video
    frame0 = fit_image(image, SIZE)
    video = np.stack([frame0, frame0])
    exact = first_frame_fidelity(video, image)
    assert exact.psnr == float("inf") and exact.ssim == pytest.approx(1.0)
    shifted = first_frame_fidelity(np.stack([np.roll(frame0, 3, axis=1)] * 2), image)
    assert shifted.psnr < 30 and shifted.ssim < 0.9


def test_metrics_reject_wrong_dtype_and_layout():
    with pytest.raises(InputError, match="uint8"):
        flicker(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"\(t, h, w, 3\)"):
        flicker(np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="at least 2 frames"):
        video_flow(np.zeros((1, 8, 8, 3), np.uint8))


# --- flow and motion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dx", "dy"), [("chelsea", 3, 0), ("coffee", 0, 2), ("astronaut", 3, 4)]
)
def test_known_shift_gives_expected_flow_magnitude(name, dx, dy):
    video = shifted_crops(photo(name), dx, dy, 6)
    expected = np.hypot(dx, dy)
    assert mean_flow_magnitude(video) == pytest.approx(expected, rel=0.10)
    motion = camera_motion(video)
    assert motion.translation[0] == pytest.approx(-dx, abs=0.1 * expected)
    assert motion.translation[1] == pytest.approx(-dy, abs=0.1 * expected)


def test_flow_is_rescaled_to_output_pixels_when_downscaled():
    video = shifted_crops(photo("astronaut"), 4, 0, 4, size=(128, 192))
    flow = video_flow(video, FlowConfig(max_side=96))
    assert flow.scale == pytest.approx(2.0) and flow.frames.shape[1:3] == (64, 96)
    assert mean_flow_magnitude(video, flow) == pytest.approx(4.0, rel=0.10)


def test_camera_convention_content_right_means_camera_left():
    # Window moving left (dx < 0): content moves right; the camera panned left.
    assert camera_motion(shifted_crops(photo("chelsea"), -2, 0, 5)).label == MotionClass.LEFT
    assert camera_motion(shifted_crops(photo("chelsea"), 2, 0, 5)).label == MotionClass.RIGHT
    assert camera_motion(shifted_crops(photo("chelsea"), 0, -2, 5)).label == MotionClass.UP
    assert camera_motion(shifted_crops(photo("chelsea"), 0, 2, 5)).label == MotionClass.DOWN


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
@pytest.mark.parametrize("motion", list(MotionClass))
def test_generated_camera_motion_is_classified(name, motion):
    video = camera_clip(photo(name), motion, 1.5, 6, SIZE)
    assert camera_motion(video).label == motion


def test_zoom_sign_and_speed():
    zoom_in = camera_motion(camera_clip(photo("coffee"), MotionClass.ZOOM_IN, 2.0, 6, SIZE))
    zoom_out = camera_motion(camera_clip(photo("coffee"), MotionClass.ZOOM_OUT, 2.0, 6, SIZE))
    assert zoom_in.divergence > 0 > zoom_out.divergence
    assert zoom_in.zoom_speed == pytest.approx(2.0, rel=0.15)
    assert zoom_in.translation_speed < 0.3


def test_static_clip_is_static_with_zero_flow():
    frame = fit_image(photo("astronaut"), SIZE)
    video = np.stack([frame] * 5)
    motion = camera_motion(video)
    assert motion.label == MotionClass.STATIC and motion.direction == MotionClass.STATIC
    assert mean_flow_magnitude(video) < 0.01


def test_a_move_under_the_static_threshold_keeps_its_direction():
    # 0.06 px/frame of content moving right is under the threshold (0.001 of the diagonal, here
    # 0.115 px) but is still the camera going left.
    video = camera_clip(photo("chelsea"), MotionClass.LEFT, 0.06, 6, SIZE)
    motion = camera_motion(video)
    assert motion.translation_speed < 0.001 * np.hypot(*SIZE)
    assert motion.label == MotionClass.STATIC and motion.direction == MotionClass.LEFT
    fast = camera_motion(camera_clip(photo("chelsea"), MotionClass.LEFT, 1.5, 6, SIZE))
    assert fast.label == fast.direction == MotionClass.LEFT


def test_fit_similarity_recovers_a_synthetic_field():
    h, w = 40, 60
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
    tx, ty, s, r = 1.5, -0.5, 0.02, 0.01
    flow = np.stack([tx + s * dx - r * dy, ty + s * dy + r * dx], -1).astype(np.float32)
    mask = np.ones((h, w), bool)
    mask[:, :10] = False  # an asymmetric mask must not bias the fit
    assert fit_similarity(flow, mask) == pytest.approx((tx, ty, s, r), abs=1e-5)


def test_classify_thresholds():
    diagonal = 1000.0  # static below 0.001 * diagonal = 1 px/frame
    assert classify((0.9, 0.0), 0.0, 0.0, diagonal) == MotionClass.STATIC
    assert classify((1.5, 1.0), 0.5, 0.01, diagonal) == MotionClass.LEFT
    assert classify((0.5, -1.5), 0.5, 0.01, diagonal) == MotionClass.DOWN
    assert classify((0.5, 0.5), 2.0, -0.01, diagonal) == MotionClass.ZOOM_OUT


def test_consistency_rejects_the_revealed_strip():
    video = shifted_crops(
        photo("coffee"), 4, 0, 2
    )  # content moves left 4 px: 4 new columns at the right
    flow = video_flow(video)
    pair = flow.pairs[0]
    # In frame t, the leftmost columns leave the frame: their forward match lands outside.
    assert pair.forward_valid[:, :3].mean() < 0.1
    # In frame t+1, the rightmost columns are new: their backward match lands outside frame t.
    assert pair.backward_valid[:, -3:].mean() < 0.1
    assert pair.forward_valid[:, 10:-10].mean() > 0.75
    # Self-consistency on hand-made fields: f = (2, 0), b = (-2, 0) agree; b = (+2, 0) does not.
    f = np.zeros((20, 30, 2), np.float32)
    f[..., 0] = 2
    assert consistent(f, -f)[:, :20].all()
    assert not consistent(f, f)[:, :20].any()


def test_farneback_direction_convention():
    a = fit_image(photo("chelsea"), SIZE)
    b = np.roll(a, 2, axis=1)  # content moves right by 2
    flow = farneback(luminance(a), luminance(b))
    assert np.median(flow[:, 10:-10, 0]) == pytest.approx(2.0, abs=0.1)


# --- temporal consistency ---------------------------------------------------------------------


def test_brightness_jitter_raises_flicker():
    rng = np.random.default_rng(0)
    for motion in (MotionClass.STATIC, MotionClass.LEFT, MotionClass.ZOOM_IN):
        clean = camera_clip(photo("astronaut"), motion, 1.0, 10, SIZE)
        # Alternating sign, random size 4..8 gray levels: steps of at least 8 between frames.
        signs = np.where(np.arange(len(clean)) % 2 == 0, 1, -1)
        offsets = (signs * rng.integers(4, 9, size=len(clean)))[:, None, None, None]
        jittered = np.clip(clean.astype(int) + offsets, 0, 255).astype(np.uint8)
        a, b = flicker(clean), flicker(jittered)
        assert b.luminance > a.luminance + 3
        assert b.luminance_jitter > a.luminance_jitter + 3


def test_static_clip_has_zero_flicker_and_hand_derived_luminance_steps():
    frame = fit_image(photo("coffee"), SIZE)
    assert flicker(np.stack([frame] * 4)) == Flicker(0.0, 0.0, 0.0, 0.0)
    gray = np.full((4, 16, 16, 3), 100, np.uint8)
    gray[1] += 10  # mean luma 100, 110, 100, 100: steps 10, 10, 0
    f = flicker(gray)
    assert f.luminance == pytest.approx(20 / 3, abs=1e-4)
    # jitter: |110 - 100| and |100 - 105| -> mean 7.5
    assert f.luminance_jitter == pytest.approx(7.5, abs=1e-4)


def test_alternating_blur_raises_high_frequency_flicker():
    clean = camera_clip(photo("chelsea"), MotionClass.RIGHT, 1.0, 8, SIZE)
    boiling = clean.copy()
    boiling[1::2] = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in clean[1::2]])
    assert flicker(boiling).high_frequency > 5 * flicker(clean).high_frequency
    assert flicker(boiling).high_frequency_jitter > 5 * flicker(clean).high_frequency_jitter


def test_warping_error_low_for_pure_motion_high_for_unexplained_change():
    pan = camera_clip(photo("coffee"), MotionClass.LEFT, 2.0, 6, SIZE)
    rng = np.random.default_rng(1)
    noisy = np.clip(pan + rng.normal(0, 20, pan.shape), 0, 255).astype(np.uint8)
    shuffled = pan[[0, 3, 1, 5, 2, 4]]
    assert warping_error(pan) < 1e-3
    assert warping_error(noisy) > 10 * warping_error(pan)
    assert warping_error(shuffled) > warping_error(pan)


def test_evaluate_video_bundles_everything():
    image = photo("astronaut")
    video = camera_clip(image, MotionClass.UP, 1.0, 6, SIZE)
    m = evaluate_video(video, image)
    assert (m.frames, m.height, m.width) == (6, *SIZE)
    assert m.motion.label == MotionClass.UP
    assert m.flow_magnitude == pytest.approx(1.0, rel=0.1)
    assert m.psnr is not None and 0 < m.ssim <= 1
    assert evaluate_video(video).psnr is None


@pytest.mark.parametrize("kind", ["pan_left", "tilt_up", "zoom_in", "zoom_out"])
def test_carry_over_keeps_a_faithful_move_and_catches_a_smear(kind):
    """Real photo, rendered camera move: the last frame is frame 0 moved by the chained per-pair
    fits (zooms too, so the chain composes scale about the centre), ~30-45 dB. The same clip
    blurred more each frame (a steady smear, what the default model does in a pan) loses >= 8 dB."""
    from kinetograph.data import camera_motion as cm
    from kinetograph.data.sources import load_photo
    from kinetograph.eval.temporal import carry_over

    cfg = cm.CameraMotionConfig(height=128, width=128, num_frames=14, fps=8.0)
    clip = cm.render(load_photo("chelsea"), cm.CameraMove(kind, 20.0), cfg, np.random.default_rng(0))
    smear = np.stack([cv2.GaussianBlur(f, (0, 0), 0.3 + 0.4 * t) for t, f in enumerate(clip)])
    kept, smeared = carry_over(clip), carry_over(smear)
    assert kept > 28, kept
    assert smeared < kept - 8, (kept, smeared)
    # without the camera (frame 0 compared as it is) the moved picture would not match
    assert psnr(clip[0], clip[-1]) < kept - 8
    static = np.repeat(clip[:1], 5, axis=0)
    assert carry_over(static) == 100.0
    assert evaluate_video(clip).carry_over == pytest.approx(kept)
