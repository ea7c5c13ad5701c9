"""The training stages of SVD (Blattmann et al. 2023, sec. 3-4) on our one VideoUNet, plus the VAE.

    vae       our own small autoencoder: reconstruction + KL (stage 0, our models only)
    image     the UNet as an image model: 1-frame clips, image_only_indicator = 1, so alpha = 1
              exactly and the temporal layers are bypassed (frozen, never run)
    video     "insert temporal layers": every temporal parameter re-initialised with its last
              projection zeroed, so the network equals the per-frame image network at insertion;
              then clips with fps / motion micro-conditioning
    finetune  image-to-video as SVD: noise-augmented conditioning-frame latent concatenated to the
              input, CLIP image embedding as cross-attention context, fps / motion / cond_aug
              micro-conditioning from the data; full or LoRA

Conditioning in every diffusion stage is SVD's: the CLIP image embedding of the clip's first frame
is the cross-attention context (dropped to zeros with `cond_drop_prob`, the unconditional branch
of guidance). Text-conditioned models (`SVDConfig.text_encoder`) also get the caption, encoded by
the frozen text encoder the model names; each sample independently loses its image
(`cond_drop_prob`), its text (`text_drop_prob`) or both (`both_drop_prob`), so one network learns
every branch of compositional guidance. Stage image of a text model is text-to-image, as SVD's
stage 1 (Stable Diffusion 2.1): the caption is the only context, the image embedding stays zero.
Stages image and video feed zeros in the concatenated image-latent channels and keep their
conv_in weights at zero, so stage finetune starts exactly from the video model (sgm instead widens conv_in with zero weights when it adds the channels).

Latents: the first stage samples the posterior. Our VAE always applies quant_conv; sgm's first
stage (the official training latents) does not, so `first_stage_quant_conv = false` encodes with
encoder -> moments only for official weights. The concat latent is always encoder -> quant_conv
-> posterior mode, unscaled, as at inference (ImageToVideo.encode_condition).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from kinetograph.conditioning import Cond, drop_conditioning
from kinetograph.errors import InputError
from kinetograph.diffusion.denoiser import Denoiser, Network, VScalingEDMcNoise
from kinetograph.diffusion.samplers import sample_euler
from kinetograph.diffusion.schedules import init_noise_scale, karras_sigmas
from kinetograph.models.clip_image import clip_preprocess
from kinetograph.models.layers import AlphaBlender, ResBlock, timestep_embedding
from kinetograph.models.svd import SVD
from kinetograph.models.text import TextEncoder, check_text_encoder, load_text_encoder
from kinetograph.models.unet import SpatialVideoTransformer, VideoTransformerBlock, VideoUNet
from kinetograph.models.vae import VAE
from kinetograph.training.config import TrainConfig
from kinetograph.training.loss import EDMLoss, VAELoss
from kinetograph.training.lora import add_lora
from kinetograph.training.rng import SampleRNG

TEMPORAL = ("time_stack", "time_pos_embed", "time_mixer")
# Noise-level density per stage, ln(sigma) ~ N(p_mean, p_std^2): EDM's image default, and for
# video the density shifted to more noise (SVD App. D; the values public SVD finetuning code uses).
SIGMA_DEFAULTS = {"image": (-1.2, 1.2), "video": (0.7, 1.6), "finetune": (0.7, 1.6)}


def is_temporal(name: str) -> bool:
    return any(part in TEMPORAL for part in name.split("."))


# ---------------------------------------------------------------------------------------------
# Temporal layers: insertion (stage video) and bypass (stage image).


@torch.no_grad()
def insert_temporal_layers(unet: VideoUNet, seed: int = 0) -> int:
    """Re-initialise every temporal parameter so that the video network is the image network.

    Each temporal branch gets fresh default weights, then its last projection is zeroed, so the
    branch returns its input: a temporal ResBlock's out conv (identity skip remains), a temporal
    transformer block's ff_in / attn1 / attn2 / ff (/ attn_text) output layers (residuals remain), and the
    frame-index embedding's last Linear. Then x_temporal == x_spatial and the blend
    alpha * x + (1 - alpha) * x is x for any alpha (mix_factor back to sgm's 0.5). Gradients still
    reach every temporal parameter through the zeroed layers after the first step, as with
    zero-initialised residual branches. Returns the number of parameters re-initialised.
    """
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's CPU RNG as it was
        torch.manual_seed(seed)
        for name, module in unet.named_modules():
            if is_temporal(name) and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    for name, module in unet.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, AlphaBlender):
            module.mix_factor.fill_(0.5)
        elif last == "time_stack" and isinstance(module, ResBlock):
            _zero(module.out_layers[-1])
        elif last == "time_pos_embed":
            _zero(module[-1])
        elif isinstance(module, VideoTransformerBlock):
            layers = [module.ff_in.net[-1], module.attn1.to_out[0], module.attn2.to_out[0], module.ff.net[-1]]
            if module.attn_text is not None:
                layers.append(module.attn_text.to_out)
            for layer in layers:
                _zero(layer)
    return sum(p.numel() for n, p in unet.named_parameters() if is_temporal(n))


def _zero(layer: nn.Module) -> None:
    for p in layer.parameters():
        p.zero_()


@torch.no_grad()
def zero_concat_channels(unet: VideoUNet) -> None:
    """Zero conv_in's weights on the concatenated image-latent channels (unused before finetune)."""
    conv = unet.input_blocks[0][0]
    conv.weight[:, unet.cfg.out_channels :] = 0.0


def _passthrough(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return x


@contextmanager
def temporal_bypass(unet: nn.Module) -> Iterator[None]:
    """Inside the block every temporal branch returns its input instead of running.

    Exact for image batches: with image_only_indicator = 1 the blend is 1 * spatial + 0 * temporal,
    which is spatial for any finite temporal output, so skipping the branch saves its forward and
    backward without changing a bit (tested).
    """
    blocks = [m for n, m in unet.named_modules() if n.rsplit(".", 1)[-1] == "time_stack"]
    targets = [m for b in blocks for m in (b if isinstance(b, nn.ModuleList) else [b])]
    for m in targets:
        m.forward = _passthrough
    try:
        yield
    finally:
        for m in targets:
            del m.forward


# ---------------------------------------------------------------------------------------------
# Encoding a batch.


def micro_vectors(fps_id: torch.Tensor, motion: torch.Tensor, cond_aug: torch.Tensor, dim: int) -> torch.Tensor:
    """Batched `conditioning.micro_conditioning`: (b,) each -> (b, 3*dim), [fps | motion | aug]."""
    return torch.cat([timestep_embedding(v.float(), dim) for v in (fps_id, motion, cond_aug)], dim=-1)


@torch.no_grad()
def first_stage_moments(vae: VAE, frames: torch.Tensor, quant_conv: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of each frame, ((b t), z, h, w) each, as the training latents see it."""
    if quant_conv:
        return vae.encode_moments(frames)
    # sgm AutoencodingEngine: encoder -> DiagonalGaussianRegularizer, no quant_conv
    mean, logvar = vae.encoder(frames).chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def posterior_sample(vae: VAE, mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Scaled training latents: mean + std * eps, times the VAE's scale factor."""
    return (mean + torch.exp(0.5 * logvar) * eps.to(mean.dtype)) * vae.cfg.scale_factor


@torch.no_grad()
def first_stage_latents(vae: VAE, frames: torch.Tensor, eps: torch.Tensor, quant_conv: bool) -> torch.Tensor:
    """Training latents ((b t), z, h, w), scaled: a posterior sample of each frame (sgm first stage)."""
    return posterior_sample(vae, *first_stage_moments(vae, frames, quant_conv), eps)


class LatentCache:
    """Posterior moments of clips already encoded, keyed by a hash of the clip's pixels.

    Each clip is encoded on its own (t frames per VAE call), so a latent does not depend on which
    other clips shared its batch, nor on whether it came from the cache: a resumed run, whose
    cache starts empty, computes the same numbers.
    """

    def __init__(self) -> None:
        self.moments: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __call__(self, vae: VAE, video: torch.Tensor, quant_conv: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, t, 3, H, W) clips -> (mean, logvar), ((b t), z, h, w) each."""
        means, logvars = [], []
        for clip in video:  # (t, 3, H, W)
            key = hashlib.blake2b(clip.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
            key += repr(tuple(clip.shape)).encode()
            if key not in self.moments:
                self.misses += 1
                self.moments[key] = first_stage_moments(vae, clip, quant_conv)
            else:
                self.hits += 1
            mean, logvar = self.moments[key]
            means.append(mean)
            logvars.append(logvar)
        return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def image_embedding(model: SVD, frames: torch.Tensor) -> torch.Tensor:
    """CLIP embedding of (b, 3, H, W) frames in [-1, 1] -> (b, 1, d) float32."""
    return model.image_encoder(clip_preprocess(frames))[:, None, :].float()


class Autoencoder(nn.Module):
    """The VAE's encode-sample-decode as one forward, so DDP/FSDP can wrap stage vae's training."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, eps: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, ...]:
        mean, logvar = self.vae.encode_moments(pixels)  # ((b t), z, h, w)
        z = mean + torch.exp(0.5 * logvar) * eps.to(mean.dtype)
        return self.vae.decode(z, num_frames=num_frames), mean, logvar


def unet_network(unet: nn.Module) -> Network:
    """F(x_in, c_noise, cond) for the Denoiser: the (possibly DDP/FSDP-wrapped) UNet on [x_in | concat]."""

    def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        out = unet(
            torch.cat([x_in, cond.concat.to(x_in.dtype)], dim=1),
            c_noise,
            cond.crossattn,
            cond.vector,
            cond.num_frames,
            cond.image_only_indicator,
            # Text-conditioned UNets: per-token states, mask, pooled vector (None for image-only models).
            text_tokens=cond.text_tokens,
            text_mask=cond.text_mask,
            text_pooled=cond.text_pooled,
        )
        return out.float()

    return network


@dataclass
class Inputs:
    """What the loss needs from one micro batch."""

    x0: torch.Tensor  # ((b t), c, h, w): clean latents (diffusion) or pixels (vae)
    num_frames: int
    cond: Cond | None = None


class Stage:
    """Common parts; subclasses set `name` and override what differs."""

    name = ""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.preset_name = "tiny"  # the model's preset (sampling defaults); set when the model is built
        self.text: CaptionEncoder | None = None  # text models: the frozen encoder, loaded on first use
        self.latent_cache = LatentCache()  # used when data.cache_latents is set

    def text_context(self, model: SVD, captions: list[str], device: torch.device):
        """Encoded captions (tokens, mask, pooled) for a text model; None for text-blind models."""
        if not model.cfg.text_encoder:
            return None
        if self.text is None:
            self.text = CaptionEncoder.for_model(model)
        return self.text(captions, device)

    @property
    def num_frames(self) -> int:
        return self.cfg.data.num_frames

    def prepare(self, model: SVD) -> None:
        """Changes a fresh run makes to the loaded model before training (re-done identically on resume)."""

    def trainable(self, model: SVD) -> dict[str, nn.Parameter]:
        return {f"unet.{n}": p for n, p in model.unet.named_parameters()}

    def module(self, model: SVD) -> nn.Module:
        """The module that trains, and that DDP/FSDP wraps."""
        return model.unet

    @contextmanager
    def forward_context(self, module: nn.Module) -> Iterator[None]:
        yield

    def make_loss(self, model: SVD) -> EDMLoss | VAELoss:
        p_mean, p_std = SIGMA_DEFAULTS[self.name]
        loss = self.cfg.loss
        return EDMLoss(
            p_mean=p_mean if loss.p_mean is None else loss.p_mean,
            p_std=p_std if loss.p_std is None else loss.p_std,
            weighting=loss.weighting,
            anchor_scale=model.cfg.anchor_scale,
        )

    def loss(self, loss_fn: EDMLoss | VAELoss, module: nn.Module, inputs: Inputs, rng: SampleRNG) -> torch.Tensor:
        """Per-video loss (b,)."""
        return loss_fn(unet_network(module), inputs.x0, inputs.cond, rng)

    def augment(self, video: torch.Tensor, rng: SampleRNG, centres: list | None = None) -> torch.Tensor:
        """data.crop: a random window per clip (the same in all its frames, so the motion is
        kept); data.color_augment: a random RGB channel order per clip. Both give a small set of
        scenes more variants: the autoencoder learns colour instead of a few scenes' colours, and
        the UNet cannot recognise a scene by where things are and recall it, but has to carry the
        conditioning frame over (the default model's 66 scenes, docs/model-card.md).

        centres: per clip None, or the (y, x) fractions its window must be centred on (the batch's
        "window_centre": a zoom's fixed point), since an off-centre window of a zoom also pans."""
        d = self.cfg.data
        if not (d.crop or d.color_augment):
            return video
        centres = centres or [None] * len(video)
        clips = []
        for clip, centre, (uy, ux, up) in zip(video, centres, rng.rand(3).tolist()):  # clip (t, 3, H, W)
            if d.crop:
                h, w = clip.shape[-2:]
                if centre is None:
                    y, x = int(uy * (h - d.crop + 1)), int(ux * (w - d.crop + 1))
                else:
                    y = min(max(round(centre[0] * h - d.crop / 2), 0), h - d.crop)
                    x = min(max(round(centre[1] * w - d.crop / 2), 0), w - d.crop)
                clip = clip[..., y : y + d.crop, x : x + d.crop]
            if d.color_augment:
                clip = clip[:, list(_CHANNEL_ORDERS[int(up * len(_CHANNEL_ORDERS))])]
            clips.append(clip)
        return torch.stack(clips)

    # -- diffusion stages --------------------------------------------------------------------

    def encode(self, model: SVD, batch: dict, rng: SampleRNG, train: bool = True) -> Inputs:
        """Batch -> clean latents and conditioning. Draw order per sample: [augmentation], latent eps,
        [cond aug], [still bucket], drop.

        train=False (validation) never drops the conditioning.
        """
        video = batch["video"]  # (b, t, 3, H, W) in [-1, 1]
        if train:
            video = self.augment(video, rng, batch.get("window_centre"))
        b, t = video.shape[:2]
        frames = rearrange(video, "b t c h w -> (b t) c h w")
        vae = model.vae
        f = vae.cfg.downsample_factor
        eps = rng.randn(t, vae.cfg.z_channels, video.shape[-2] // f, video.shape[-1] // f)
        eps = rearrange(eps, "b t c h w -> (b t) c h w")
        quant_conv = self.cfg.model.first_stage_quant_conv
        if self.cfg.data.cache_latents:
            x0 = posterior_sample(vae, *self.latent_cache(vae, video, quant_conv), eps)
        else:
            x0 = first_stage_latents(vae, frames, eps, quant_conv)
        first = video[:, 0]  # (b, 3, H, W)
        embedding = self.context_embedding(model, first)  # (b, 1, d)
        concat, vector = self.concat_and_vector(model, batch, first, x0.shape[1:], rng)
        u = rng.rand().to(video.device)  # (b,) decides which conditioning a sample loses
        cond = Cond(
            crossattn=repeat(embedding, "b n d -> (b t) n d", t=t),
            concat=repeat(concat, "b c h w -> (b t) c h w", t=t),
            vector=repeat(vector, "b k -> (b t) k", t=t),
            num_frames=t,
            image_only_indicator=self.image_only_indicator(b, t, video.device),
        )
        text = self.text_context(model, list(batch.get("caption", [""] * b)), video.device)
        if text is not None:
            cond = cond.with_text(*text)
        if train:  # text-blind models only ever lose their image
            loss = self.cfg.loss
            p_text, p_both = (loss.text_drop_prob, loss.both_drop_prob) if text is not None else (0.0, 0.0)
            cond = drop_conditioning(cond, loss.cond_drop_prob, p_text, p_both, u=u)
            if text is not None and loss.text_token_drop_prob > 0:  # drawn only then: older runs keep their draws
                keep = repeat(rng.rand().to(video.device) >= loss.text_token_drop_prob, "b -> (b t)", t=t)
                cond = replace(cond, text_mask=cond.text_mask & keep[:, None])
        return Inputs(x0=x0, num_frames=t, cond=cond)

    def context_embedding(self, model: SVD, first: torch.Tensor) -> torch.Tensor:
        """The cross-attention context: CLIP embedding of the first frame, (b, 1, d)."""
        return image_embedding(model, first)

    def image_only_indicator(self, b: int, t: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(b, t, device=device)

    def concat_and_vector(self, model: SVD, batch: dict, first: torch.Tensor, latent_shape, rng: SampleRNG):
        """(b, c, h, w) image latent (zeros before finetune) and (b, adm) vector conditioning."""
        b = first.shape[0]
        dim = model.cfg.unet.adm_in_channels // 3
        fps_id = batch["fps"].to(first.device).round() - 1
        vector = micro_vectors(fps_id, self.motion_condition(batch, rng, first.device), torch.zeros(b, device=first.device), dim)
        return first.new_zeros(b, *latent_shape), vector

    def motion_condition(self, batch: dict, rng: SampleRNG, device: torch.device) -> torch.Tensor:
        """(b,) motion bucket ids to condition on: the clips' own, or with `loss.still_bucket_range`
        a uniform draw from that range for the clips that do not move (bucket 0)."""
        motion = batch["motion_bucket"].to(device).float()
        r = self.cfg.loss.still_bucket_range
        if not r:
            return motion
        lo, hi = r
        drawn = (lo + rng.rand().to(device) * (hi - lo + 1)).floor().clamp(max=hi)
        return torch.where(motion == 0, drawn, motion)

    # -- validation --------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, model: SVD, frames: torch.Tensor, fps: float, motion: int, steps: int, seed: int, prompt: str = ""
    ) -> np.ndarray:
        """Generate one clip conditioned on `frames` (1, t, 3, H, W)'s first frame (and the prompt,
        for text models) -> (t, H, W, 3) uint8."""
        device = frames.device
        batch = {"video": frames, "fps": torch.tensor([fps]), "motion_bucket": torch.tensor([motion]), "caption": [prompt]}
        inputs = self.encode(model, batch, SampleRNG(seed, [0], device), train=False)
        sigmas = karras_sigmas(steps).to(device)
        g = torch.Generator(device).manual_seed(seed)
        x = torch.randn(inputs.x0.shape, generator=g, device=device) * init_noise_scale(sigmas)
        denoiser = Denoiser(unet_network(model.unet), VScalingEDMcNoise(), model.cfg.anchor_scale)
        with self.forward_context(model.unet):
            x = sample_euler(lambda x, s: denoiser(x, s, inputs.cond), x, sigmas)
        pixels = model.vae.decode(x / model.vae.cfg.scale_factor, num_frames=inputs.num_frames)
        return to_uint8(pixels)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """((t), 3, H, W) in [-1, 1] -> (t, H, W, 3) uint8."""
    frames = ((pixels.float() + 1) / 2).clamp(0, 1)
    return (rearrange(frames, "t c h w -> t h w c") * 255).round().to(torch.uint8).cpu().numpy()


_CHANNEL_ORDERS = tuple(itertools.permutations(range(3)))

# Posterior log-variance a VAE trained from scratch starts with (std ~0.02). From a random init it
# would start near 0 (std 1: the decoder sees mostly noise), and Adam moves a bias by about lr per
# step, so the reconstruction would wait thousands of steps for the noise to shrink.
VAE_LOGVAR_INIT = -8.0


class VAEStage(Stage):
    name = "vae"

    def prepare(self, model: SVD) -> None:
        if not self.cfg.model.init:  # a fresh autoencoder; a loaded one keeps its posterior
            z = model.vae.cfg.z_channels
            with torch.no_grad():
                model.vae.quant_conv.bias[z:] += VAE_LOGVAR_INIT

    def trainable(self, model: SVD) -> dict[str, nn.Parameter]:
        """Every VAE parameter, or with model.train = "decoder" the decoder's alone (as SVD trains
        its temporal decoder): the latents, and so a UNet trained on them, stay valid."""
        decoder_only = self.cfg.model.train == "decoder"
        return {
            f"vae.{n}": p for n, p in model.vae.named_parameters()
            if not decoder_only or n.startswith(("decoder.", "post_quant_conv."))
        }

    def module(self, model: SVD) -> nn.Module:
        return Autoencoder(model.vae)

    def make_loss(self, model: SVD) -> VAELoss:
        return VAELoss(kl_weight=self.cfg.loss.kl_weight, recon=self.cfg.loss.recon)

    def encode(self, model: SVD, batch: dict, rng: SampleRNG, train: bool = True) -> Inputs:
        video = batch["video"]  # (b, t, 3, H, W)
        if train:
            video = self.augment(video, rng, batch.get("window_centre"))
        return Inputs(x0=rearrange(video, "b t c h w -> (b t) c h w"), num_frames=video.shape[1])

    def loss(self, loss_fn, module, inputs, rng):
        return loss_fn(module, inputs.x0, inputs.num_frames, rng)

    @torch.no_grad()
    def calibrate(self, model: SVD, batches: Iterator[dict], d, n_batches: int = 4) -> float:
        """Set the latent scale factor to 1 / std of posterior samples over a few batches (as SD chose
        0.18215), so the diffusion stages see unit-variance latents; stored in the exported config.
        With model.standardize_latent_channels, each channel is first rescaled to unit std. A
        decoder-only run from an init keeps the init's scale (its encoder is frozen)."""
        from kinetograph.training.distributed import all_mean

        if self.cfg.model.train == "decoder" and self.cfg.model.init:
            # The init's encoder, and with it the latents' scale, is unchanged: a UNet trained on
            # those latents (the init's own) stays valid only if the scale does too.
            return model.cfg.vae.scale_factor
        device = next(model.vae.parameters()).device
        frames = [rearrange(next(batches)["video"].to(device), "b t c h w -> (b t) c h w") for _ in range(n_batches)]

        def moments() -> torch.Tensor:  # (2, z): per-channel E[z^2] and E[z] of posterior samples
            sums = torch.zeros(2, model.vae.cfg.z_channels, device=device, dtype=torch.float64)
            for i, x in enumerate(frames):
                z = model.vae.encode(x, sample=True, generator=torch.Generator(device).manual_seed(i)).double()
                sums += torch.stack([z.square().mean(dim=(0, 2, 3)), z.mean(dim=(0, 2, 3))])
            return all_mean(sums, d) / n_batches

        if self.cfg.model.standardize_latent_channels:
            second, first = moments()
            model.vae.rescale_latent_channels((second - first**2).clamp_min(1e-12).sqrt().float())
        second, first = (m.mean().item() for m in moments())
        scale = float(1.0 / max(second - first**2, 1e-12) ** 0.5)
        vae_cfg = replace(model.cfg.vae, scale_factor=scale)
        model.cfg = replace(model.cfg, vae=vae_cfg)
        model.vae.cfg = vae_cfg
        return scale

    @torch.no_grad()
    def sample(self, model: SVD, frames, fps, motion, steps, seed, prompt: str = "") -> np.ndarray:
        """Reconstruction (posterior mode) next to the input, side by side."""
        t = frames.shape[1]
        x = rearrange(frames, "b t c h w -> (b t) c h w")
        recon = model.vae.decode(model.vae.encode(x), num_frames=t)
        return to_uint8(torch.cat([x, recon], dim=-1))


class ImageStage(Stage):
    name = "image"

    @property
    def num_frames(self) -> int:
        return 1

    def prepare(self, model: SVD) -> None:
        zero_concat_channels(model.unet)

    def trainable(self, model: SVD) -> dict[str, nn.Parameter]:
        return {f"unet.{n}": p for n, p in model.unet.named_parameters() if not is_temporal(n)}

    @contextmanager
    def forward_context(self, module: nn.Module) -> Iterator[None]:
        with temporal_bypass(module):
            yield

    def image_only_indicator(self, b: int, t: int, device: torch.device) -> torch.Tensor:
        return torch.ones(b, t, device=device)

    def context_embedding(self, model: SVD, first: torch.Tensor) -> torch.Tensor:
        # Text models: text-to-image (the caption is the context); else SVD's image embedding.
        if model.cfg.text_encoder:
            return first.new_zeros(first.shape[0], 1, model.cfg.unet.context_dim)
        return image_embedding(model, first)

    def concat_and_vector(self, model, batch, first, latent_shape, rng):
        # A still image has no fps or motion: no micro-conditioning (zeros, a constant label_emb).
        b = first.shape[0]
        return first.new_zeros(b, *latent_shape), first.new_zeros(b, model.cfg.unet.adm_in_channels)


class VideoStage(Stage):
    name = "video"

    def prepare(self, model: SVD) -> None:
        insert_temporal_layers(model.unet, self.cfg.run.seed)
        zero_concat_channels(model.unet)

    def trainable(self, model: SVD) -> dict[str, nn.Parameter]:
        only_temporal = self.cfg.model.train == "temporal"
        return {f"unet.{n}": p for n, p in model.unet.named_parameters() if not only_temporal or is_temporal(n)}


class FinetuneStage(Stage):
    name = "finetune"

    def prepare(self, model: SVD) -> None:
        m = self.cfg.model
        if m.lora_rank > 0:
            add_lora(model.unet, m.lora_rank, m.lora_alpha, m.lora_targets)

    def trainable(self, model: SVD) -> dict[str, nn.Parameter]:
        params = {f"unet.{n}": p for n, p in model.unet.named_parameters()}
        if self.cfg.model.lora_rank > 0:
            params = {n: p for n, p in params.items() if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")}
        return params

    def concat_and_vector(self, model, batch, first, latent_shape, rng):
        """SVD's image conditioning: latent of the noise-augmented first frame, and cond_aug = its sigma."""
        loss = self.cfg.loss
        cond_sigma = rng.log_normal(loss.cond_aug_p_mean, loss.cond_aug_p_std).to(first.device)  # (b,)
        noise = rng.randn(*first.shape[1:]).to(first.device)  # (b, 3, H, W)
        noisy = first + cond_sigma[:, None, None, None] * noise
        with torch.no_grad():
            latent = model.vae.encode(noisy)  # posterior mode, unscaled, with quant_conv (as inference)
        dim = model.cfg.unet.adm_in_channels // 3
        fps_id = batch["fps"].to(first.device).round() - 1
        vector = micro_vectors(fps_id, self.motion_condition(batch, rng, first.device), cond_sigma, dim)
        return latent, vector

    @torch.no_grad()
    def sample(self, model: SVD, frames, fps, motion, steps, seed, prompt: str = "") -> np.ndarray:
        """Image-to-video with the pipeline users run (ImageToVideo) on the in-memory model."""
        from kinetograph.pipeline.image_to_video import ImageToVideo  # pipeline imports io; keep it lazy
        from kinetograph.presets import PRESETS

        preset = PRESETS.get(self.preset_name, PRESETS["tiny"])
        pipe = ImageToVideo(model, preset, frames.device, text_encoder=self.text.encoder if self.text else None)
        first = to_uint8(frames[0, :1])[0]  # (H, W, 3)
        video = pipe(
            first, prompt or None, height=frames.shape[-2], width=frames.shape[-1], num_frames=frames.shape[1],
            num_inference_steps=steps, fps=max(1, round(fps)), motion_bucket_id=motion, seed=seed,
            decode_chunk_size=frames.shape[1],
        )
        return video.frames


def add_text_branch(model: SVD, encoder_spec: str) -> SVD:
    """`model` with a text branch for `encoder_spec` (zero-initialised: same outputs as before).

    A model that already has text must name the same encoder; official weights get new
    `attn_text` / `norm_text` / `text_emb` parameters, every other weight is copied.
    """
    encoder = load_text_encoder(encoder_spec)
    if model.cfg.text_encoder:
        check_text_encoder(model.cfg.text_encoder, model.cfg.unet.text_dim, encoder)
        return model
    cfg = replace(model.cfg, unet=replace(model.cfg.unet, text_dim=encoder.width), text_encoder=encoder.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        new = SVD(cfg)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(any(k in m for k in ("attn_text", "norm_text", "text_emb")) for m in missing), missing
    return new


def add_attention(model: SVD, factors: tuple[int, ...]) -> SVD:
    """`model` with spatio-temporal attention also at the downsample factors `factors` (same outputs).

    The new `SpatialVideoTransformer`s end in a zero-initialised projection, so each is the
    identity until trained; every other weight is copied. Keys keep the official layout: a level's
    transformer is entry 1 of its input and output blocks, whose upsampler (if any) moves from
    entry 1 to entry 2, so those are renamed.
    """
    unet = model.cfg.unet
    levels = [2**level for level in range(len(unet.channel_mult))]
    if not set(factors) <= set(levels):
        raise InputError(f"model.attention_resolutions {list(factors)}: this model's levels have downsample "
                         f"factors {', '.join(map(str, levels))}; choose among those")
    wanted = tuple(sorted(set(unet.attention_resolutions) | set(factors), reverse=True))
    if wanted == unet.attention_resolutions:
        return model
    cfg = replace(model.cfg, unet=replace(unet, attention_resolutions=wanted))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        new = SVD(cfg)
    sd = model.state_dict()
    for i, block in enumerate(new.unet.output_blocks):
        if len(block) == 3 and len(model.unet.output_blocks[i]) == 2:  # gained attention before its upsampler
            up = f"unet.output_blocks.{i}.1."
            sd = {f"unet.output_blocks.{i}.2.{k[len(up):]}" if k.startswith(up) else k: v for k, v in sd.items()}
    missing, unexpected = new.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected[:3]
    # Only the new transformers start fresh: "unet.<input|output>_blocks.<i>.1.<...>".
    assert all(isinstance(new.get_submodule(".".join(k.split(".")[:4])), SpatialVideoTransformer) for k in missing)
    return new


class CaptionEncoder:
    """Captions -> (tokens (b, n, d), mask (b, n), pooled (b, d)) from the model's frozen text encoder.

    The encoder runs on the training device; encodings are cached per caption (datasets repeat
    captions) on the CPU; an empty caption is "no text" (all-False mask, zero pooled vector), the
    same as a dropped text.
    """

    def __init__(self, encoder: TextEncoder, max_cached: int = 100_000):
        self.encoder = encoder
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.max_cached = max_cached

    @staticmethod
    def for_model(model: SVD) -> CaptionEncoder:
        name = model.cfg.text_encoder
        encoder = load_text_encoder(name)
        check_text_encoder(name, model.cfg.unet.text_dim, encoder)
        return CaptionEncoder(encoder)

    @torch.no_grad()
    def __call__(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = sorted({c for c in captions if c and c not in self.cache})
        known = {c: self.cache[c] for c in captions if c in self.cache}
        if missing:
            if self.encoder.device != device:
                # On the training device: paraphrased captions are mostly new (~28 of 32 a step),
                # and MiniLM took 268 ms for 32 on a 2-core CPU (docs/benchmarks.md, sessions 15-16).
                self.encoder.to(device)
            emb = self.encoder.encode(missing)
            # One copy to the host for the batch (not one wait for the device per caption).
            tokens, lengths, pooled = emb.tokens.cpu(), emb.mask.sum(dim=1).tolist(), emb.pooled.cpu()
            for i, c in enumerate(missing):
                n = lengths[i]  # real tokens come first (right padding)
                known[c] = (tokens[i, :n].clone(), pooled[i].clone())
                if len(self.cache) < self.max_cached:
                    self.cache[c] = known[c]
        rows = [known[c] if c else None for c in captions]
        present = [r for r in rows if r is not None]
        n = max((r[0].shape[0] for r in present), default=1)
        pooled_width = present[0][1].shape[0] if present else self.encoder.width
        tokens = torch.zeros(len(captions), n, self.encoder.width)
        mask = torch.zeros(len(captions), n, dtype=torch.bool)
        pooled = torch.zeros(len(captions), pooled_width)
        for i, r in enumerate(rows):
            if r is not None:
                k = r[0].shape[0]
                tokens[i, :k], mask[i, :k], pooled[i] = r[0], True, r[1]
        return tokens.to(device), mask.to(device), pooled.to(device)


STAGE_CLASSES: dict[str, type[Stage]] = {"vae": VAEStage, "image": ImageStage, "video": VideoStage, "finetune": FinetuneStage}


def make_stage(cfg: TrainConfig) -> Stage:
    return STAGE_CLASSES[cfg.stage](cfg)
