"""Clips with known camera motion, made by moving a crop window over a still photo.

Ground truth for the motion metrics (and a stand-in generator for testing the eval command):
the window pans, tilts or zooms at a set speed, so the content's optical flow is known.
Same convention as `motion.py`: `MotionClass.LEFT` moves the window (camera) left, so the
content moves right by `speed` output pixels per frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from kinetograph.eval.clips import check_image
from kinetograph.eval.motion import MotionClass

# Direction the window centre moves per frame, in output pixels, for unit speed.
_PAN = {
    MotionClass.LEFT: (-1.0, 0.0),
    MotionClass.RIGHT: (1.0, 0.0),
    MotionClass.UP: (0.0, -1.0),
    MotionClass.DOWN: (0.0, 1.0),
}


def camera_clip(
    image: np.ndarray,
    motion: MotionClass,
    speed: float,
    num_frames: int,
    size: tuple[int, int],
) -> np.ndarray:
    """A uint8 (t, h, w, 3) clip of `image` seen through a moving window of `size` = (h, w).

    speed: content speed in output pixels per frame; for zooms, the radial speed at the mean
    distance from the frame centre at frame 0 (scale grows by exp(k) per frame, k = speed / r).
    The photo is first area-resized so the whole path fits inside it, then sampled bilinearly.
    """
    check_image(image, "photo")
    h, w = size
    t = np.arange(num_frames, dtype=np.float64)
    ys, xs = np.mgrid[0:h, 0:w]
    mean_radius = float(np.hypot(xs - (w - 1) / 2, ys - (h - 1) / 2).mean())
    rate = speed / mean_radius if motion in (MotionClass.ZOOM_IN, MotionClass.ZOOM_OUT) else 0.0
    zoom = np.exp((rate if motion == MotionClass.ZOOM_IN else -rate) * t)  # output px per photo px
    step = np.array(_PAN.get(motion, (0.0, 0.0))) * speed
    travel = np.abs(step) * (num_frames - 1)  # (x, y) output pixels the window centre moves

    # Extent (output pixels at zoom 1) the photo must cover: the window path, centred.
    need_w = w / zoom.min() + travel[0] + 2
    need_h = h / zoom.min() + travel[1] + 2
    ih, iw = image.shape[:2]
    base = max(need_w / iw, need_h / ih)  # photo resize factor so 1 photo px = 1 output px
    photo = cv2.resize(
        image, (int(np.ceil(iw * base)), int(np.ceil(ih * base))), interpolation=cv2.INTER_AREA
    )
    ph, pw = photo.shape[:2]
    start = np.array([(pw - 1) / 2, (ph - 1) / 2]) - step * (num_frames - 1) / 2
    out_centre = np.array([(w - 1) / 2, (h - 1) / 2])

    frames = []
    for i in range(num_frames):
        centre = start + step * i
        # Inverse map output -> photo: q = centre + (p - out_centre) / zoom.
        m = np.array(
            [
                [1 / zoom[i], 0, centre[0] - out_centre[0] / zoom[i]],
                [0, 1 / zoom[i], centre[1] - out_centre[1] / zoom[i]],
            ]
        )
        frames.append(
            cv2.warpAffine(
                photo,
                m,
                (w, h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REFLECT,
            )
        )
    return np.stack(frames)
