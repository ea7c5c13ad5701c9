"""kinetograph: image (+ text) to video with Stable Video Diffusion, faithful and trainable."""

__version__ = "0.1.0"
