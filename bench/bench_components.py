"""Full-size UNet forward and VAE decode, ours vs diffusers, in one process on identical weights.

Isolates the networks from loading and sampling: random full-size weights, converted with our
key maps into the diffusers twins, the same inputs, min of 3 runs each. Prints ratios
(diffusers / ours: > 1 means we are faster).

    .venv/bin/python bench/bench_components.py --frames 8 --latent 16
"""

from __future__ import annotations

import argparse
import time

import torch


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from kinetograph.io.diffusers_unet import unet_diffusers_config, unet_to_diffusers
    from kinetograph.io.diffusers_vae import vae_diffusers_config, vae_to_diffusers
    from kinetograph.models.unet import UNetConfig, VideoUNet
    from kinetograph.models.vae import VAE, VAEConfig

    def twin(cls, config: dict, sd: dict):
        model = cls(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
        model.load_state_dict(sd)
        return model

    t, s = args.frames, args.latent
    results = {}
    with torch.inference_mode():
        unet = VideoUNet(UNetConfig()).eval()
        for p in unet.parameters():  # default init leaves zero convs: give every layer real work
            if not p.abs().sum():
                p.normal_(0, 0.01)
        ref = twin(UNetSpatioTemporalConditionModel, unet_diffusers_config(unet.cfg), unet_to_diffusers(unet.state_dict()))
        b = 2  # the guided batch: uncond + cond
        x, c_noise = torch.randn(b * t, 8, s, s), torch.randn(b * t)
        ctx, y = torch.randn(b * t, 1, 1024), torch.randn(b * t, 768)
        results["unet forward"] = (
            best_of(lambda: unet(x, c_noise, ctx, y, t, torch.zeros(b, t))),
            best_of(lambda: ref(x.reshape(b, t, 8, s, s), c_noise[::t], ctx[::t], torch.tensor([[6.0, 127.0, 0.02]] * b))),
        )
        del unet, ref

        vae = VAE(VAEConfig()).eval()
        ref = twin(AutoencoderKLTemporalDecoder, vae_diffusers_config(vae.cfg), vae_to_diffusers(vae.state_dict()))
        z = torch.randn(t, 4, s, s)
        results["vae decode"] = (best_of(lambda: vae.decode(z, t, t)), best_of(lambda: ref.decode(z, num_frames=t)))

    print(f"full-size SVD networks, {t} frames, {s}x{s} latents, {args.threads} threads (min of 3, seconds)")
    print(f"{'':14s}{'ours':>8s}{'diffusers':>11s}{'ratio':>8s}")
    for name, (ours, theirs) in results.items():
        print(f"{name:14s}{ours:8.2f}{theirs:11.2f}{theirs / ours:8.2f}")


if __name__ == "__main__":
    main()
