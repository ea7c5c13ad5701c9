"""Image (+ prompt) -> video with an SVD checkpoint.

Flow: preprocess -> conditioning (CLIP embedding, VAE latent, micro-conditioning) ->
guidance(denoiser(unet)) -> sampler -> VAE decode -> frames. Keyword names follow diffusers'
StableVideoDiffusionPipeline so users can switch with no surprises; given the same initial
`latents` (or the same seed on the CPU), weights and settings, the frames match it.

Prompts (docs/text.md):
- a text-conditioned checkpoint (`unet.text_dim > 0`) encodes the prompt with the text encoder
  recorded in it and samples with compositional image/text guidance (`TextImageGuidedDenoiser`);
- the official, text-blind weights given an OpenCLIP ViT-H/14 text tower move the CLIP image
  embedding toward the prompt in CLIP space (`steer_toward_text`) before ordinary SVD sampling;
- a text-blind checkpoint without one warns that the prompt is ignored, and how to enable it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from einops import rearrange

from kinetograph.conditioning import Cond, make_cond, micro_conditioning, steer_toward_text
from kinetograph.data.camera_motion import MOTIONS
from kinetograph.diffusion.denoiser import Denoiser, VScalingEDMcNoise
from kinetograph.diffusion.guidance import GuidedDenoiser, TextImageGuidedDenoiser, linear_ramp, triangle_ramp
from kinetograph.diffusion.samplers import SAMPLERS, STOCHASTIC
from kinetograph.diffusion.schedules import init_noise_scale, karras_sigmas
from kinetograph.errors import CheckpointError, InputError
from kinetograph.io.checkpoint import load_checkpoint
from kinetograph.io.video import save_video
from kinetograph.models.clip_image import clip_preprocess
from kinetograph.models.svd import SVD
from kinetograph.models.text import OpenCLIPTextEncoder, TextEncoder, check_text_encoder, load_text_encoder
from kinetograph.pipeline.camera_prior import bucket_speed, check_move, render_move, start_index
from kinetograph.pipeline.deflicker import deflicker as steady_brightness
from kinetograph.pipeline.preprocess import check_size, image_to_tensor, load_image, resize_and_crop
from kinetograph.presets import Preset

GUIDANCE_RAMPS = {"linear": linear_ramp, "triangle": triangle_ramp}
# A camera-head model samples with the captions' wording of the move its head reads when the head
# gives that move at least this probability (of 7; below it the prompt is used as written).
CAMERA_PROMPT_MIN = 0.5
# ... in a prompt its camera gate gives at least this probability of naming a camera move.
CAMERA_NAMED_MIN = 0.5
# The camera prior's strength when a move is asked for (`camera_move`) without one and the preset
# has none (SVD's presets).
CAMERA_PRIOR_STRENGTH = 0.5


@dataclass(frozen=True)
class CameraReading:
    """What a camera head reads in a prompt: each move's probability (`probs`, summing to 1) and,
    with a camera gate, the probability that the prompt names a camera move at all (`named`)."""

    probs: dict[str, float]
    named: float = 1.0  # 1 without a gate: every prompt is read as some move

    @staticmethod
    def of(logits: torch.Tensor, named: torch.Tensor) -> CameraReading:
        """From a head's (1, moves) logits and a gate's (1, 1) probability."""
        return CameraReading(dict(zip(MOTIONS, logits.float().softmax(dim=-1)[0].tolist())), float(named[0, 0]))

    @property
    def move(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)

    @property
    def p(self) -> float:
        return self.probs[self.move]

    @property
    def asked(self) -> str | None:
        """The move the prompt asks for: the head's, at CAMERA_PROMPT_MIN or more, in a prompt
        the gate says names one (CAMERA_NAMED_MIN); None: the prompt names no move it reads."""
        return self.move if self.p >= CAMERA_PROMPT_MIN and self.named >= CAMERA_NAMED_MIN else None


TEXT_BLIND_WARNING = (
    "this checkpoint conditions on the image only, so the prompt is ignored; to steer with text, "
    "pass --text-encoder with the OpenCLIP ViT-H-14 text weights (open_clip_pytorch_model.bin, with "
    "--allow-pickle, or a .safetensors), or use a text-conditioned kinetograph checkpoint"
)


@dataclass
class Video:
    frames: np.ndarray  # (t, h, w, 3) uint8
    fps: float

    def save(self, path: str | Path) -> Path:
        """Write .mp4 (H.264), .gif, .webp or a folder of PNGs, atomically."""
        return save_video(self.frames, path, fps=self.fps)


class ImageToVideo:
    def __init__(
        self,
        model: SVD,
        preset: Preset,
        device: torch.device | str = "cpu",
        text_encoder: TextEncoder | None = None,
    ):
        """`text_encoder`: for a text-conditioned model, the encoder it was trained with (else the
        one it names is loaded at the first prompt); for text-blind SVD weights, an optional
        OpenCLIP text tower in the image encoder's CLIP space, used to steer the image embedding."""
        self.model = model
        self.preset = preset
        self.device = torch.device(device)
        cfg = model.cfg
        if text_encoder is not None:
            if cfg.unet.text_dim:
                check_text_encoder(cfg.text_encoder, cfg.unet.text_dim, text_encoder)
            elif not isinstance(text_encoder, OpenCLIPTextEncoder):
                raise InputError(
                    f"this checkpoint conditions on the image only; it can use an OpenCLIP text tower "
                    f"(a weights file) to steer its CLIP image embedding, not the text encoder {text_encoder.name!r}"
                )
            elif text_encoder.cfg.embed_dim != cfg.clip.embed_dim:
                raise CheckpointError(
                    f"the text tower projects to width {text_encoder.cfg.embed_dim} but the image encoder to "
                    f"{cfg.clip.embed_dim}; pass the OpenCLIP text weights of the same CLIP (ViT-H-14 for SVD)"
                )
        self.text_encoder = text_encoder
        self._borrowed_reader: tuple[TextEncoder, torch.nn.Linear, torch.nn.Linear] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        preset: str | None = None,
        allow_pickle: bool = False,
        text_encoder: str | Path | TextEncoder | None = None,
    ) -> ImageToVideo:
        """Load an official single file (svd, svd_xt, svd_xt_1_1, svd_image_decoder) or a diffusers folder.

        `text_encoder`: a name ("minilm-l6-v2"), a transformers folder, or an OpenCLIP text weights
        file (see `ImageToVideo.__init__`); a text-conditioned model without one loads its own.
        """
        loaded = load_checkpoint(path, device=device, dtype=dtype, preset=preset, allow_pickle=allow_pickle)
        # The reference runs the VAE in float32 whatever the UNet precision (sgm disables autocast there).
        loaded.model.vae.float()
        if isinstance(text_encoder, (str, Path)):
            text_encoder = load_text_encoder(text_encoder, allow_pickle=allow_pickle, device=device)
        return cls(loaded.model, loaded.preset, device, text_encoder)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.unet.parameters()).dtype

    # -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        image: str | Path | PIL.Image.Image | np.ndarray | torch.Tensor,
        prompt: str | None = None,
        *,
        negative_prompt: str | None = None,
        text_guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        min_guidance_scale: float | None = None,
        max_guidance_scale: float | None = None,
        fps: int | None = None,
        motion_bucket_id: int | None = None,
        noise_aug_strength: float | None = None,
        decode_chunk_size: int | None = None,
        latents: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "euler",
        guidance_ramp: str = "linear",
        pin_first_frame: bool | None = None,
        text_tokens: bool | None = None,
        camera_prompt: bool | None = None,
        camera_move: str | None = None,
        camera_prior: float | None = None,
        deflicker: bool | None = None,
        callback: Callable[[int, int], None] | None = None,
        output_type: str = "video",
    ) -> Video | torch.Tensor:
        """Generate a video from one image.

        Arguments not given take the checkpoint preset's values (the official scripts' settings).
        `latents` is the initial noise, shape (1, num_frames, z, height/f, width/f) as in diffusers (z = 4);
        otherwise it is drawn from `generator` or `torch.Generator(device).manual_seed(seed)`, in
        diffusers' order (augmentation noise first, then latents). `output_type="latent"` returns
        the final latents (1, t, z, h, w) without decoding. `callback(step, total)` reports progress.
        `text_guidance_scale`: for text-conditioned models the text term of the compositional
        guidance (0 = image only), for official weights with an OpenCLIP text tower the steering
        strength in CLIP space (0 = unchanged); `negative_prompt` is what to steer away from.
        `pin_first_frame`: frame 0 is the image's own latent (SamplingDefaults.pin_first_frame).
        `text_tokens`: text models read the prompt's tokens as well as its pooled vector (default;
        False: the pooled vector only).
        `deflicker`: move each decoded frame's mean colour onto the clip's local trend, frame 0
        kept (pipeline/deflicker.py; SamplingDefaults.deflicker).
        `camera_prompt`: models with a camera head sample with the training captions' own wording
        of the move the head reads in the prompt (`CANONICAL_CAPTIONS`) when it gives that move at
        least CAMERA_PROMPT_MIN; default: on for those models. The token path knows the captions'
        words, the head knows other wordings of a move (docs/text.md).
        `camera_prior`: start sampling from the image moved by the camera (pipeline/camera_prior.py),
        this fraction of the steps down the schedule (default: the preset's; with `camera_move`
        and a preset without one, CAMERA_PRIOR_STRENGTH). `camera_move`: the move rendered
        (one of MOTIONS), at the speed `motion_bucket_id` stands for; by default the move a camera
        head reads in the prompt, when it gives it at least CAMERA_PROMPT_MIN.
        """
        d = self.preset.sampling
        height, width = height or d.height, width or d.width
        num_frames = num_frames or d.num_frames
        steps = num_inference_steps or d.num_inference_steps
        min_g = d.min_guidance_scale if min_guidance_scale is None else min_guidance_scale
        max_g = d.max_guidance_scale if max_guidance_scale is None else max_guidance_scale
        fps = d.fps if fps is None else fps
        motion = d.motion_bucket_id if motion_bucket_id is None else motion_bucket_id
        aug = d.noise_aug_strength if noise_aug_strength is None else noise_aug_strength
        chunk = decode_chunk_size or d.decode_chunk_size
        pin = d.pin_first_frame if pin_first_frame is None else pin_first_frame
        self.check_args(height, width, num_frames, steps, fps, motion, aug, chunk, sampler, guidance_ramp, output_type)
        reading = self.camera_reading(prompt or "")  # read once: it sets both the prior's move and the caption
        camera_prior, camera_move = self.camera_prior_plan(prompt or "", camera_move, camera_prior, reading)
        first = start_index(camera_prior, steps)
        text_model = self.model.cfg.unet.text_dim > 0
        steer = not text_model and self.text_encoder is not None
        if text_guidance_scale is None:
            text_guidance_scale = d.text_steer_strength if steer else d.text_guidance_scale
        if text_guidance_scale < 0:
            raise InputError(f"text guidance must be >= 0, got {text_guidance_scale}")
        if (prompt or negative_prompt) and not text_model and not steer:
            warnings.warn(TEXT_BLIND_WARNING, stacklevel=2)

        f = self.model.cfg.vae.downsample_factor
        z = self.model.cfg.vae.z_channels  # 4 for SVD
        if latents is not None and tuple(latents.shape[1:]) != (num_frames, z, height // f, width // f):
            raise InputError(
                f"latents have shape {tuple(latents.shape)}; expected (1, {num_frames}, {z}, {height // f}, {width // f})"
            )
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(0 if seed is None else seed)

        # preprocess: (1, 3, H, W) in [-1, 1]
        pixels = image_to_tensor(resize_and_crop(load_image(image), height, width)).to(self.device)
        cond = self.encode_condition(pixels, num_frames, fps - 1, motion, aug, generator)
        if steer and (prompt or negative_prompt):
            cond = self.steer_condition(cond, prompt or "", negative_prompt or "", text_guidance_scale)
        if latents is None:
            latents = torch.randn((1, num_frames, z, height // f, width // f), generator=generator, device=self.device)
        sigmas = karras_sigmas(steps).to(self.device)
        noise = rearrange(latents.to(self.device, torch.float32), "b t c h w -> (b t) c h w")
        if first:  # the rendered move, noised to the level sampling starts at (SDEdit)
            moved = render_move(pixels, camera_move, num_frames, bucket_speed(motion, width, fps))
            sigmas = sigmas[first:]
            x = self.encode_frames(moved, chunk) + sigmas[0] * noise
        else:
            x = noise * init_noise_scale(sigmas)

        ramp = GUIDANCE_RAMPS[guidance_ramp](min_g, max_g, num_frames).to(self.device)
        if text_model and (prompt or negative_prompt) and text_guidance_scale > 0:
            # No prompt but a negative one: steer away from it, relative to no text.
            if prompt and (camera_prompt is None or camera_prompt):
                prompt = self.camera_caption(prompt, reading) or prompt
            tokens = text_tokens is None or text_tokens
            text_cond = self.add_text(cond, prompt, tokens) if prompt else cond
            negative = self.add_text(cond, negative_prompt, tokens) if negative_prompt else None
            if not text_cond.has_text:  # only a negative prompt: D(img, ∅) - D(img, negative)
                text_cond, negative = negative, None
                text_guidance_scale = -text_guidance_scale
            guided = TextImageGuidedDenoiser(self.denoiser, text_cond, ramp, text_guidance_scale, negative)
        else:
            guided = GuidedDenoiser(self.denoiser, cond, cond.zeroed(), ramp)

        if pin:
            clean = self.model.vae.encode(pixels.float()) * self.model.cfg.vae.scale_factor  # (1, c, h, w)
            guided = PinnedFirstFrame(guided, clean, num_frames)

        def on_step(i, n, x, denoised):
            if callback is not None:
                callback(i + 1, n)

        # A stochastic sampler continues the seeded generator, so its video is as reproducible.
        extra = {"generator": generator} if sampler in STOCHASTIC else {}
        if len(sigmas) > 1:  # else a full-strength camera prior left nothing to sample
            x = SAMPLERS[sampler](guided, x, sigmas, callback=on_step, **extra)
        if output_type == "latent":
            return rearrange(x, "(b t) c h w -> b t c h w", t=num_frames)
        frames = self.decode(x, num_frames, chunk, d.deflicker if deflicker is None else deflicker)
        return Video(frames=frames, fps=float(fps))

    # -----------------------------------------------------------------------------------------

    def encode_frames(self, frames: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """(t, 3, h, w) frames in [-1, 1] -> (t, c, h/f, w/f) latents in the sampler's scale."""
        vae = self.model.vae
        latents = [vae.encode(frames[i:i + chunk_size].float()) for i in range(0, len(frames), chunk_size)]
        return torch.cat(latents) * vae.cfg.scale_factor

    def encode_condition(
        self,
        pixels: torch.Tensor,
        num_frames: int,
        fps_id: float,
        motion_bucket_id: float,
        noise_aug_strength: float,
        generator: torch.Generator,
    ) -> Cond:
        """CLIP embedding of the clean frame, VAE latent of the noise-augmented frame, micro-conditioning."""
        dtype = self.dtype
        clip_in = clip_preprocess(pixels).to(dtype)
        embedding = self.model.image_encoder(clip_in)[:, None, :].float()  # (b, 1, d)
        noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        noisy = pixels + noise_aug_strength * noise
        latent = self.model.vae.encode(noisy.float())  # (b, c, h, w), posterior mode, unscaled (as SVD)
        vector = micro_conditioning(fps_id, motion_bucket_id, noise_aug_strength, self.model.cfg.unet.adm_in_channels // 3)
        return make_cond(embedding, latent, vector.to(pixels.device), num_frames)

    def get_text_encoder(self) -> TextEncoder:
        """The text encoder: the one given, else (text-conditioned models) the one the checkpoint names."""
        if self.text_encoder is None:
            name = self.model.cfg.text_encoder
            if not name:
                raise InputError("this checkpoint has no text branch; see TEXT_BLIND_WARNING")
            encoder = load_text_encoder(name, device=self.device)
            check_text_encoder(name, self.model.cfg.unet.text_dim, encoder)
            self.text_encoder = encoder
        return self.text_encoder

    def add_text(self, cond: Cond, prompt: str, tokens: bool = True) -> Cond:
        """`cond` with the encoded prompt (text-conditioned models); `tokens=False` masks its tokens
        out and keeps the pooled vector."""
        emb = self.get_text_encoder().encode([prompt])
        mask = emb.mask if tokens else torch.zeros_like(emb.mask)
        return cond.with_text(emb.tokens.to(self.device), mask.to(self.device), emb.pooled.to(self.device))

    def camera_reading(self, prompt: str) -> CameraReading | None:
        """What the camera head (and gate) read in `prompt` (None without a head)."""
        unet = self.model.unet
        if unet.camera_head is None or not prompt:
            return None
        with torch.no_grad():
            pooled = self.get_text_encoder().encode([prompt]).pooled.to(self.device)
            return CameraReading.of(unet.camera_logits(pooled), unet.camera_named(pooled))

    def camera_move(self, prompt: str, reading: CameraReading | None = None) -> str | None:
        """The move `prompt` asks for as the camera head reads it (or gave as `reading`, from
        `camera_reading`): `CameraReading.asked`."""
        reading = reading or self.camera_reading(prompt)
        return reading.asked if reading else None

    def borrowed_camera_reading(self, prompt: str) -> CameraReading | None:
        """For a model with no camera head of its own (official SVD weights among them): what the
        default model's camera head and gate read in `prompt`, over MiniLM (None for no prompt).
        Loaded at the first call (~1 s)."""
        if not prompt:
            return None
        if self._borrowed_reader is None:
            from kinetograph.default_model import camera_reader_layers
            from kinetograph.models.text import MINILM_NAME

            self._borrowed_reader = (load_text_encoder(MINILM_NAME), *camera_reader_layers())
        encoder, head, gate = self._borrowed_reader
        with torch.no_grad():
            x = torch.nn.functional.normalize(encoder.encode([prompt]).pooled.float(), dim=-1)  # as UNet.camera_logits
            return CameraReading.of(head(x), torch.sigmoid(gate(x)))

    def camera_prior_plan(
        self, prompt: str, move: str | None, strength: float | None, reading: CameraReading | None = None
    ) -> tuple[float, str | None]:
        """The camera prior's strength and move for these `__call__` arguments. Strength: the one
        given, else the preset's, else CAMERA_PRIOR_STRENGTH if a move is given. Move: the one
        given, else (with a strength) the one the camera head reads in `prompt` (or gave as
        `reading`); for a model without a head and a strength given, the one the default model's
        head reads (`borrowed_camera_reading`). With the preset's strength and no move read, the
        prior is off (0, None): such a prompt samples as usual."""
        if move is not None:
            check_move(move)
        preset = strength is None and move is None
        if strength is None:
            strength = self.preset.sampling.camera_prior or (CAMERA_PRIOR_STRENGTH if move is not None else 0.0)
        if not 0.0 <= strength <= 1.0:
            raise InputError(f"camera prior must be in 0..1 (0 = off), got {strength}")
        if strength and move is None:
            if self.model.unet.camera_head is None and not preset:
                reading = self.borrowed_camera_reading(prompt)
            move = self.camera_move(prompt, reading)
            if move is None and preset:
                return 0.0, None
            if move is None:
                raise InputError("the camera prior renders a camera move: name one (--camera-move, one of "
                                 f"{', '.join(MOTIONS)}), or give a prompt that asks for one")
        return strength, move

    def camera_caption(self, prompt: str, reading: CameraReading | None = None) -> str | None:
        """The training captions' wording of the move `prompt` asks for as the camera head reads
        it (or gave as `reading`, from `camera_reading`); None without a head, or for a prompt
        that names no move it reads (`CameraReading.asked`)."""
        from kinetograph.data.camera_motion import CANONICAL_CAPTIONS

        move = self.camera_move(prompt, reading)
        return CANONICAL_CAPTIONS[move] if move else None

    def camera_report(self, prompt: str | None, camera_prompt: bool | None, camera_move: str | None,
                      camera_prior: float | None) -> tuple[list[str], str | None, bool | None]:
        """What the camera will do, in the lines `kinetograph generate` prints and a web job shows:
        the move a camera head reads in `prompt` and the wording sampled with, and the camera
        prior's plan. Returns those lines, and the prompt and `camera_prompt` to call with: the
        reading is decided here, so `__call__` reads the prompt no more."""
        lines = []
        reading = self.camera_reading(prompt or "")
        if reading:  # models with a camera head: say which move the prompt reads as, and what is sampled
            caption = self.camera_caption(prompt, reading) if camera_prompt is None or camera_prompt else None
            used = f"; sampling with {caption!r}" if caption else "; sampling with the prompt as written"
            move = reading.move.replace("_", " ")
            if reading.asked:
                read = f"reads as {move} ({reading.p:.0%})"
            elif reading.named < CAMERA_NAMED_MIN:
                read = f"names no camera move ({1 - reading.named:.0%} sure)"
            else:
                read = f"names no move clearly (at most {reading.p:.0%} {move})"
            lines.append(f"camera: the prompt {read}{used}")
            prompt, camera_prompt = caption or prompt, False
        strength, move = self.camera_prior_plan(prompt or "", camera_move, camera_prior)
        if strength:
            # A model without a camera head takes the move from the default model's head and gate.
            source = " (read in the prompt by the default model's camera head)" \
                if camera_move is None and self.model.unet.camera_head is None else ""
            lines.append(f"camera prior: the image moved by {move.replace('_', ' ')}{source}, sampled from "
                         f"{strength:.0%} of the way down the noise schedule")
        elif camera_prior is None and self.preset.sampling.camera_prior:
            lines.append("camera prior: off: the prompt names no camera move the head reads, and no camera "
                         "move was named")
        return lines, prompt, camera_prompt

    def steer_condition(self, cond: Cond, prompt: str, negative_prompt: str, strength: float) -> Cond:
        """Official weights + OpenCLIP text tower: the image embedding moved toward the prompt."""
        pooled = self.get_text_encoder().encode([prompt, negative_prompt]).pooled.to(self.device)  # (2, d)
        steered = steer_toward_text(cond.crossattn, pooled[0], pooled[1], strength)
        return dataclasses.replace(cond, crossattn=steered)

    def network(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The UNet on [c_in * x, image latent], in the model dtype; output in float32."""
        dtype = self.dtype
        n = x_in.shape[0]
        text = {}
        if cond.has_text:
            text = dict(
                text_tokens=cond.text_tokens.to(dtype), text_mask=cond.text_mask, text_pooled=cond.text_pooled.to(dtype)
            )
        out = self.model.unet(
            torch.cat([x_in, cond.concat], dim=1).to(dtype),
            c_noise.reshape(-1).expand(n).to(dtype),
            cond.crossattn.to(dtype),
            cond.vector.to(dtype),
            num_video_frames=cond.num_frames,
            image_only_indicator=cond.image_only_indicator.to(dtype),
            **text,
        )
        return out.float()

    @property
    def denoiser(self) -> Denoiser:
        return Denoiser(self.network, VScalingEDMcNoise(), self.model.cfg.anchor_scale)

    def decode(self, latents: torch.Tensor, num_frames: int, chunk_size: int, deflicker: bool = False) -> np.ndarray:
        """((b t), c, h, w) latents -> (t, H, W, 3) uint8 frames of the first video."""
        vae = self.model.vae
        pixels = vae.decode(latents.float() / vae.cfg.scale_factor, num_frames=num_frames, chunk_size=chunk_size)
        pixels = pixels[:num_frames]
        if deflicker:
            pixels = steady_brightness(pixels)
        frames = ((pixels + 1) / 2).clamp(0, 1)
        frames = rearrange(frames, "t c h w -> t h w c")
        return (frames * 255).round().to(torch.uint8).cpu().numpy()

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's factor times the UNet's downsampling
        (64 for the released models)."""
        cfg = self.model.cfg
        return cfg.vae.downsample_factor * 2 ** (len(cfg.unet.channel_mult) - 1)

    def check_args(self, height, width, num_frames, steps, fps, motion, aug, chunk, sampler, ramp, output_type):
        """Refuse `__call__` settings this model cannot sample, in one line naming the fix (the
        web server checks a job with it before queueing)."""
        check_size(height, width, self.size_multiple)
        if num_frames < 1:
            raise InputError(f"num_frames must be >= 1, got {num_frames}")
        if steps < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {steps}")
        if fps < 1:
            raise InputError(f"fps must be >= 1, got {fps}")
        if not 0 <= motion <= 255:
            raise InputError(f"motion_bucket_id must be in 0..255, got {motion}")
        if not 0.0 <= aug <= 10.0:
            raise InputError(f"noise_aug_strength must be in 0..10 (0.02 is the default), got {aug}")
        if chunk < 1:
            raise InputError(f"decode_chunk_size must be >= 1, got {chunk}")
        if sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if ramp not in GUIDANCE_RAMPS:
            raise InputError(f"unknown guidance ramp {ramp!r}; choose one of {', '.join(GUIDANCE_RAMPS)}")
        if output_type not in ("video", "latent"):
            raise InputError(f"output_type must be 'video' or 'latent', got {output_type!r}")


class PinnedFirstFrame:
    """A denoiser whose estimate of each video's frame 0 is `latent`, the input image's clean
    latent: the sampler then takes frame 0 from its noise straight to the image (its noise level
    stays the schedule's at every step, as the other frames expect) and ends on it exactly."""

    def __init__(self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latent: torch.Tensor,
                 num_frames: int) -> None:
        self.denoiser, self.latent, self.num_frames = denoiser, latent, num_frames

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x, sigma).clone()
        out[:: self.num_frames] = self.latent.to(out.dtype)
        return out
