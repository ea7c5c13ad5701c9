"""Named model configurations and their sampling defaults.

The released models share one architecture; they differ in the frames they were trained on and
in the sampling settings of the official scripts (`scripts/sampling/configs/svd*.yaml`,
`simple_video_sample.py`). `tiny` is a small random-weight configuration for tests and benches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from kinetograph.models.clip_image import CLIPVisionConfig
from kinetograph.models.unet import UNetConfig
from kinetograph.models.vae import VAEConfig


@dataclass(frozen=True)
class SVDConfig:
    """The three networks of an image-to-video model (+ the text encoder a text model expects)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    # Name of the text encoder whose tokens (width unet.text_dim) the UNet was trained on, e.g.
    # "minilm-l6-v2"; "" for text-blind models. Saved with the config in checkpoint metadata.
    text_encoder: str = ""
    # Our own models may denoise relative to the conditioning image's latent
    # (`diffusion.denoiser.Denoiser`, anchor_scale): with a few dozen training scenes the UNet
    # otherwise recalls the scene it recognises in the image instead of carrying the image over.
    # False for the official checkpoints. `anchor_scale` gives the Denoiser's argument.
    image_anchor: bool = False

    def __post_init__(self) -> None:
        if bool(self.text_encoder) != bool(self.unet.text_dim):
            raise ValueError(
                f"text_encoder {self.text_encoder!r} and unet.text_dim {self.unet.text_dim} must be set together"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def anchor_scale(self) -> float:
        """The Denoiser's anchor_scale: the concat latent times the VAE scale factor, or 0 (none)."""
        return self.vae.scale_factor if self.image_anchor else 0.0

    @staticmethod
    def from_dict(d: dict) -> SVDConfig:
        def tuples(cfg: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}

        return SVDConfig(
            unet=UNetConfig(**tuples(d["unet"])),
            vae=VAEConfig(**tuples(d["vae"])),
            clip=CLIPVisionConfig(**tuples(d["clip"])),
            text_encoder=d.get("text_encoder", ""),
            image_anchor=d.get("image_anchor", False),
        )


@dataclass(frozen=True)
class SamplingDefaults:
    """What a user gets when they pass nothing: the official script's settings for this model."""

    num_frames: int = 14
    num_inference_steps: int = 25
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 2.5
    fps: int = 7  # diffusers convention: the model sees fps_id = fps - 1 (sgm's fps_id 6)
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    decode_chunk_size: int = 14  # sgm's decoding_t; the decoder output depends on it
    height: int = 576
    width: int = 1024
    # Text-conditioned models: scale of the text term of compositional guidance (--text-guidance).
    text_guidance_scale: float = 4.0
    # Official (text-blind) weights with an OpenCLIP text tower: how far the CLIP image embedding
    # is moved toward the prompt (--text-guidance there; see conditioning.steer_toward_text).
    text_steer_strength: float = 0.3
    # Frame 0 is the input image: at every step the denoiser's estimate of frame 0 is replaced by
    # the image's clean latent (the replacement method of Song et al. 2021), so the video starts
    # from the photo itself and the other frames are denoised next to it. SVD generates frame 0
    # like the others (False, the official behaviour).
    pin_first_frame: bool = False
    # Each frame's mean colour moved onto the clip's local linear trend after decoding
    # (pipeline/deflicker.py): removes frame-to-frame brightness jitter, keeps frame 0 and any
    # linear brightness change. SVD does not (False, the official behaviour).
    deflicker: bool = False
    # Start sampling from the image moved by the camera move asked for, this fraction of the steps
    # down the schedule (pipeline/camera_prior.py; 0 = off, the official behaviour).
    camera_prior: float = 0.0


@dataclass(frozen=True)
class Preset:
    name: str
    model: SVDConfig
    sampling: SamplingDefaults


_XT = SamplingDefaults(num_frames=25, num_inference_steps=30, min_guidance_scale=1.5, max_guidance_scale=3.0)

TINY_MODEL = SVDConfig(
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2),
        num_head_channels=16,
        context_dim=32,
        adm_in_channels=3 * 16,
    ),
    vae=VAEConfig(ch=32, ch_mult=(1, 2)),  # 2 res blocks: diffusers' temporal decoder needs them
    # image_size stays 224: the reference pipelines always resize the CLIP input to 224.
    clip=CLIPVisionConfig(width=32, layers=2, heads=2, patch_size=32, image_size=224, embed_dim=32),
)

# The tiny network with a text branch fed by all-MiniLM-L6-v2 tokens (width 384): tests, examples.
TINY_TEXT_MODEL = replace(TINY_MODEL, unet=replace(TINY_MODEL.unet, text_dim=384), text_encoder="minilm-l6-v2")

# A small text model for CPU experiments (bench/text_motion.py): VAE downsampling 4, attention
# only at the two coarser UNet levels, MiniLM text tokens. 64x64 video -> 16x16 latents.
MINI_TEXT_MODEL = SVDConfig(
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(2, 4),
        num_head_channels=32,
        context_dim=32,
        adm_in_channels=3 * 16,
        text_dim=384,
    ),
    vae=VAEConfig(ch=32, ch_mult=(1, 2, 2)),
    clip=CLIPVisionConfig(width=32, layers=2, heads=2, patch_size=32, image_size=224, embed_dim=32),
    text_encoder="minilm-l6-v2",
)

# The embedded default model (docs/model-card.md): 256x256 video through a VAE with downsampling 8,
# 6 latent channels and smooth patch shortcuts, so that it starts as a linear autoencoder (grey
# sampled every 4 pixels, colour every 8, bilinear back: ~25 dB on unseen photos) whose latents
# follow a camera move smoothly, and training refines the decoder. The UNet works on 32x32
# latents; a 14-frame 256x256 video takes ~30 s on two CPU cores.
MINI256_MODEL = SVDConfig(
    unet=UNetConfig(
        in_channels=12,
        out_channels=6,
        model_channels=32,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attention_resolutions=(2, 4, 8),
        num_head_channels=32,
        context_dim=32,
        adm_in_channels=3 * 16,
        text_dim=384,
        # The caption has to choose a move's direction, a sign flip: a scale can express it in one
        # layer, a bias only through later gating (ADM's choice; stage 2 reached a lower loss with
        # it, but no run has yet learned the direction either way: docs/model-card.md).
        scale_shift_norm=True,
        # The temporal blocks read the caption too: only there do the features know their frame,
        # and a move's direction is what changes from frame to frame (docs/model-card.md, v4).
        temporal_text=True,
    ),
    # 8 GroupNorm groups (4 channels each at width 32): with SVD's 32, each norm would remove
    # every channel's mean, and the decoder could not carry an image's colours. Six shift-smooth
    # latent channels (VAEConfig.patch_shortcut_basis): with v1's 16 DCT patch channels, a
    # one-pixel camera move changed most channels by more than their own spread, so the frames
    # after the first could not be predicted from it (docs/model-card.md).
    vae=VAEConfig(
        ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=6, norm_groups=8,
        patch_shortcut=True, patch_shortcut_basis="smooth",
    ),
    clip=CLIPVisionConfig(width=32, layers=2, heads=2, patch_size=32, image_size=224, embed_dim=32),
    text_encoder="minilm-l6-v2",
    # 66 training scenes: relative to the image, the UNet learns motion it can apply to any photo
    # (docs/model-card.md, "Why an anchored denoiser").
    image_anchor=True,
)

PRESETS: dict[str, Preset] = {
    "svd": Preset("svd", SVDConfig(), SamplingDefaults()),
    "svd_image_decoder": Preset(
        "svd_image_decoder", SVDConfig(vae=VAEConfig(temporal_decoder=False)), SamplingDefaults()
    ),
    "svd_xt": Preset("svd_xt", SVDConfig(), _XT),
    "svd_xt_1_1": Preset("svd_xt_1_1", SVDConfig(), _XT),
    "svd_xt_image_decoder": Preset(
        "svd_xt_image_decoder", SVDConfig(vae=VAEConfig(temporal_decoder=False)), _XT
    ),
    "tiny": Preset(
        "tiny",
        TINY_MODEL,
        SamplingDefaults(num_frames=4, num_inference_steps=4, decode_chunk_size=4, height=64, width=64),
    ),
    "tiny_text": Preset(
        "tiny_text",
        TINY_TEXT_MODEL,
        SamplingDefaults(num_frames=4, num_inference_steps=4, decode_chunk_size=4, height=64, width=64),
    ),
    "mini_text": Preset(
        "mini_text",
        MINI_TEXT_MODEL,
        SamplingDefaults(num_frames=8, num_inference_steps=12, fps=8, decode_chunk_size=8, height=64, width=64,
                         min_guidance_scale=1.0, max_guidance_scale=2.0, motion_bucket_id=160),
    ),
    "mini256": Preset(
        "mini256",
        MINI256_MODEL,
        # Image guidance off (1.0 on every frame): against SVD's 1 -> 2 ramp it keeps the text suite
        # (18 / 28), keeps more of the photo through a move (carry-over 14.1 dB vs 12.5), flickers
        # less (1.07 vs 1.41) and skips the unconditional branch, a third of the UNet work
        # (docs/model-card.md, session 11). Frame 0 pinned to the photo: frame 0 keeps 25.7 dB
        # instead of 23.7 (the autoencoder's round trip), with the same text control, bucket
        # control and carry-over (docs/model-card.md, session 12). Deflickered: its frames' brightness
        # jitters ~5x its training clips' otherwise (docs/model-card.md, session 15). Camera prior
        # 0.8 (from sigma 0.13 of 20 steps): the photo moved as the head reads the prompt, which the
        # network refines; alone, it smears what it moves within a few frames (carry-over 13 dB
        # against 20 with the prior; docs/model-card.md, session 18).
        SamplingDefaults(num_frames=14, num_inference_steps=20, fps=8, decode_chunk_size=14, height=256, width=256,
                         min_guidance_scale=1.0, max_guidance_scale=1.0, motion_bucket_id=145,
                         pin_first_frame=True, deflicker=True, camera_prior=0.8),
    ),
}


def preset_for_file(filename: str, temporal_decoder: bool) -> Preset:
    """Guess the preset of an official file from its name (the layouts of svd and svd_xt are identical)."""
    name = filename.lower()
    xt = "xt" in name
    if temporal_decoder:
        return PRESETS["svd_xt_1_1" if "1_1" in name else "svd_xt"] if xt else PRESETS["svd"]
    return PRESETS["svd_xt_image_decoder" if xt else "svd_image_decoder"]


def with_sampling(preset: Preset, **overrides) -> Preset:
    return replace(preset, sampling=replace(preset.sampling, **overrides))
