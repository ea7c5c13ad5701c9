"""All per-video metrics in one pass (optical flow is computed once and shared)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinetograph.eval.clips import check_video, fit_image
from kinetograph.eval.fidelity import PrepareImage, first_frame_fidelity
from kinetograph.eval.flow import FlowConfig, video_flow
from kinetograph.eval.motion import CameraMotion, MotionConfig, camera_motion, mean_flow_magnitude
from kinetograph.eval.temporal import carry_over, flicker, warping_error


@dataclass(frozen=True)
class VideoMetrics:
    frames: int
    height: int
    width: int
    psnr: float | None  # frame 0 vs conditioning image, dB; None without an image
    ssim: float | None
    flicker_luminance: float  # gray levels per frame
    flicker_high_frequency: float  # relative change of detail energy per frame
    flicker_luminance_jitter: float  # the same, against the mean of the neighbouring frames
    flicker_high_frequency_jitter: float
    warping_error: float  # MSE in [0, 1] units outside occlusions
    carry_over: float  # dB: the last frame against frame 0 moved by the camera (a smear scores low)
    flow_magnitude: float  # mean optical flow, output pixels per frame
    motion: CameraMotion


def evaluate_video(
    video: np.ndarray,
    conditioning: np.ndarray | None = None,
    *,
    prepare: PrepareImage = fit_image,
    flow_cfg: FlowConfig = FlowConfig(),
    motion_cfg: MotionConfig = MotionConfig(),
) -> VideoMetrics:
    """Fidelity (when `conditioning` is given), flicker, warping error, carry-over and motion of a clip."""
    check_video(video, min_frames=2)
    flow = video_flow(video, flow_cfg)
    fidelity = (
        first_frame_fidelity(video, conditioning, prepare) if conditioning is not None else None
    )
    steadiness = flicker(video)
    t, h, w, _ = video.shape
    return VideoMetrics(
        frames=t,
        height=h,
        width=w,
        psnr=fidelity.psnr if fidelity else None,
        ssim=fidelity.ssim if fidelity else None,
        flicker_luminance=steadiness.luminance,
        flicker_high_frequency=steadiness.high_frequency,
        flicker_luminance_jitter=steadiness.luminance_jitter,
        flicker_high_frequency_jitter=steadiness.high_frequency_jitter,
        warping_error=warping_error(video, flow),
        carry_over=carry_over(video, flow),
        flow_magnitude=mean_flow_magnitude(video, flow),
        motion=camera_motion(video, flow, motion_cfg),
    )
