"""Where along the sampler does a video's camera move appear (or fade)?

    python bench/sampler_trace.py MODEL.safetensors --size 64 --photo immunohistochemistry \
        "The camera pans quickly to the left across the scene." "The camera pans quickly to the right across the scene."

Samples each prompt with the model's defaults (Euler) and, at every step, decodes the denoiser's
prediction D (the guided one the sampler uses) and measures its camera motion by optical flow, as
the evaluation measures a finished video. Photos are scikit-image names.
"""

from __future__ import annotations

import argparse

import torch
from einops import rearrange
from skimage import data as skdata

import kinetograph.pipeline.image_to_video as i2v
from kinetograph.eval.motion import camera_motion
from kinetograph.io.checkpoint import load_checkpoint
from kinetograph.pipeline.preprocess import load_image, resize_and_crop
from kinetograph.training.stages import to_uint8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an exported model (.safetensors)")
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--photo", default="chelsea", help="a scikit-image photo name")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_checkpoint(args.model, dtype=torch.float32)
    model = loaded.model.eval()
    pipe = i2v.ImageToVideo(model, loaded.preset, torch.device("cpu"))
    photo = resize_and_crop(load_image(getattr(skdata, args.photo)()), args.size, args.size)

    trace: list[tuple[float, torch.Tensor]] = []
    euler = i2v.SAMPLERS["euler"]

    def traced(denoiser, x, sigmas, callback=None):  # the pipeline's sampler, recording D per step
        def record(i, n, x_i, denoised):
            trace.append((float(sigmas[i]), denoised.clone()))
            if callback is not None:
                callback(i, n, x_i, denoised)
        return euler(denoiser, x, sigmas, callback=record)

    i2v.SAMPLERS["euler"] = traced
    for prompt in args.prompts:
        trace.clear()
        video = pipe(photo, prompt, height=args.size, width=args.size, num_inference_steps=args.steps, seed=0)
        frames = video.frames.shape[0]
        final = camera_motion(video.frames)
        print(f"{prompt}\n  video: {final.label.value}, content flow ({final.translation[0]:+.2f}, "
              f"{final.translation[1]:+.2f}) px/frame, zoom {final.zoom_speed:.2f}")
        for sigma, denoised in trace:
            latents = denoised[0] if denoised.ndim == 5 else rearrange(denoised, "(b t) c h w -> b t c h w", t=frames)[0]
            pixels = model.vae.decode(latents / model.vae.cfg.scale_factor, num_frames=frames, chunk_size=frames)
            m = camera_motion(to_uint8(pixels))
            print(f"  sigma {sigma:8.3f}: D {m.label.value:8s} ({m.translation[0]:+.2f}, {m.translation[1]:+.2f}) "
                  f"zoom {m.zoom_speed:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
