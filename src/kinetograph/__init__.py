"""kinetograph: image (+ text) to video with Stable Video Diffusion, faithful and trainable.

    from kinetograph import ImageToVideo
    pipe = ImageToVideo.from_checkpoint("svd_xt.safetensors")
    pipe("photo.jpg", seed=23).save("out.mp4")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ImageToVideo", "Video", "__version__"]


def __getattr__(name: str):
    # Lazy: `import kinetograph` (and the CLI's --help) stays fast; torch loads on first use.
    if name in ("ImageToVideo", "Video"):
        from kinetograph.pipeline import image_to_video

        return getattr(image_to_video, name)
    raise AttributeError(f"module 'kinetograph' has no attribute {name!r}")
