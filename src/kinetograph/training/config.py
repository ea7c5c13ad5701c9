"""Typed training configuration: TOML files validated into dataclasses, written back resolved.

A config file has one table per dataclass below (`[model]`, `[data]`, `[optim]`, ...), plus an
optional top-level `stage`. Unknown keys and wrong types are errors naming the key, so a typo
fails before the first step instead of silently training with a default. Every run writes the
resolved config (defaults filled in, overrides applied) to `<out_dir>/config.toml`; that file
loads back to the same `TrainConfig`.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from kinetograph.errors import InputError

STAGES = ("vae", "image", "video", "finetune")


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"  # architecture when training from scratch (kinetograph.presets.PRESETS)
    init: str = ""  # checkpoint to start from (previous stage's export, or official SVD weights); "" = random
    # Training latents: sgm's first stage encodes *without* quant_conv (the official UNet was trained
    # on those); our own VAE (stage vae) is trained through quant_conv. False for official weights.
    first_stage_quant_conv: bool = True
    gradient_checkpointing: bool = False  # recompute UNet blocks in backward (less memory, ~30% slower)
    # Stage video: "all" UNet parameters, or "temporal" layers only. Stage vae: "all", or "decoder"
    # only (the encoder, and with it the latent space a trained UNet uses, stays fixed).
    train: str = "all"
    lora_rank: int = 0  # finetune: >0 trains low-rank adapters on attention projections only
    lora_alpha: float = 0.0  # LoRA scale is alpha / rank; 0 means alpha = rank (scale 1)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # Add a text branch fed by this encoder ("minilm-l6-v2", a transformers folder, an OpenCLIP
    # file) to a text-blind init checkpoint; its output starts at zero, so training starts from
    # exactly the image-only model. "" = the model's own (none for official SVD weights).
    text_encoder: str = ""
    # Add spatio-temporal attention at these downsample factors (2**level, e.g. (1,) for the finest
    # level) to an init checkpoint that lacks it; each new block's output projection starts at zero,
    # so training starts from exactly the init model. () = the model's own attention.
    attention_resolutions: tuple[int, ...] = ()
    # Stage vae, at export: rescale each latent channel to unit std (exact: `VAE.rescale_latent_channels`)
    # before the global scale factor is measured. For autoencoders whose channels differ widely.
    standardize_latent_channels: bool = False
    # Give a text model a camera head (`training/camera.py`): a classifier of the camera move a
    # caption asks for, fitted on `camera_head_captions` captions of each camera clip of data.root
    # and frozen; its probabilities feed the UNet through a layer that starts at zero. An init
    # checkpoint that has one keeps it.
    camera_head: bool = False
    camera_head_captions: int = 16


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # dataset folder (manifest.jsonl + shards), e.g. from `kinetograph data build`
    num_frames: int = 4  # frames per clip (stage image always uses 1)
    fps: float = 8.0  # target frame rate of sampled clips
    height: int = 64
    width: int = 64
    kinds: tuple[str, ...] = ("video", "camera", "image")
    batch_size: int = 2  # per process and micro step
    num_workers: int = 0  # DataLoader worker processes
    # Diffusion stages: keep each clip's posterior (mean, logvar) in memory, keyed by a hash of its
    # frames, so a clip seen again is not re-encoded (the VAE is frozen there). A fresh latent is
    # still drawn per step from the cached posterior; the first frame's noise-augmented latent is
    # always encoded anew. Costs ~2 x z x t x h x w floats per distinct clip.
    cache_latents: bool = False
    # Train on one random crop x crop window per clip (the same in all its frames), cut from
    # frames loaded at height x width: the autoencoder learns at the pixel scale it will see, and a
    # diffusion stage at a fraction of the cost of whole frames, on scenes it cannot recognise by
    # their layout; 0 = whole frames. A zoom's window is centred on the zoom's fixed point.
    crop: int = 0
    # A random permutation of the RGB channels per clip (all its frames), so that a small set of
    # scenes does not teach the model their colours instead of how to carry colour over.
    color_augment: bool = False
    # Camera clips get a fresh paraphrase of their move's caption each time they are served
    # (`data.camera_motion.paraphrase`), so the model learns the move, not four sentences.
    paraphrase_captions: bool = False
    seed: int = 0  # data order, crops, noise: every random draw is a function of (seed, sample position)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warmup from 0
    schedule: str = "constant"  # "constant" or "cosine" (to min_lr_ratio * lr at max_steps)
    min_lr_ratio: float = 0.0
    grad_accum: int = 1  # micro steps per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 = off


@dataclass(frozen=True)
class LossConfig:
    # ln(sigma) ~ N(p_mean, p_std^2) (Karras et al. 2022). None = the stage's default: EDM's
    # (-1.2, 1.2) for images, (0.7, 1.6) shifted to more noise for video (SVD App. D).
    p_mean: float | None = None
    p_std: float | None = None
    weighting: str = "edm"  # "edm": lambda(sigma) = 1/c_out^2 (unit-variance target); "unit": 1
    cond_aug_p_mean: float = -3.0  # finetune: ln(cond sigma) ~ N(-3.0, 0.5^2), as SVD
    cond_aug_p_std: float = 0.5
    cond_drop_prob: float = 0.1  # drop the image: zero image embedding + image latent (the CFG branch)
    # Text models only (exclusive events per sample, with cond_drop_prob): drop the caption, or both.
    text_drop_prob: float = 0.1
    both_drop_prob: float = 0.05
    # Clips whose motion bucket is 0 (a still camera) are conditioned on a bucket drawn uniformly
    # from [lo, hi] instead, so that the caption, not the bucket, says "no motion": a prompt for a
    # still camera then holds still at any bucket setting. Moving clips keep their measured bucket,
    # which still sets the amount of motion. () = off (SVD: always the measured bucket).
    still_bucket_range: tuple[int, ...] = ()
    # Text models: of the samples that keep their caption, this share loses its tokens but keeps
    # the pooled vector (and with it the camera head's reading), so that the model learns to move
    # from those alone; that is how a camera-head model samples by default (`text_tokens`).
    text_token_drop_prob: float = 0.0
    kl_weight: float = 1e-6  # stage vae: weight of the KL term
    recon: str = "l1"  # stage vae: "l1" or "mse"


@dataclass(frozen=True)
class EMAConfig:
    decay: float = 0.999
    warmup: bool = True  # decay min(decay, (1 + step) / (10 + step)): early steps track closely
    enabled: bool = True


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/train"
    max_steps: int = 100  # optimizer steps
    seed: int = 0  # model init and temporal-layer insertion
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    distributed: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard)
    log_every: int = 1
    ckpt_every: int = 50
    keep_last: int = 3  # training checkpoints kept
    val_every: int = 0  # 0 = validate only at the end
    val_count: int = 1  # validation videos (first frames of the first items of the dataset)
    val_steps: int = 8  # sampling steps of validation videos
    val_format: str = "gif"
    export_layouts: tuple[str, ...] = ("original",)  # "original" and/or "diffusers", written at the end
    export_ema: bool = True
    tensorboard: bool = True
    progress: bool = True
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # torch.compile the trained module. For a GPU: this small model's eager step is bound by the
    # launch and dispatch of ~11k small ops (bench/train_step.py), which compiling fuses. A machine
    # key: the trajectory is the same up to rounding. Costs a compile at the start of each run.
    compile: bool = False


@dataclass(frozen=True)
class TrainConfig:
    stage: str = "image"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig, "ema": EMAConfig, "run": RunConfig}
# Keys that may change between a run and its resume (they do not change the training trajectory).
RESUMABLE_CHANGES = {("run", k) for k in ("max_steps", "log_every", "ckpt_every", "keep_last", "val_every", "val_count",
                                          "val_steps", "val_format", "export_layouts", "export_ema", "tensorboard",
                                          "progress", "threads", "compile")} | {("data", "num_workers"), ("data", "cache_latents")}


def check(cfg: TrainConfig) -> None:
    """Value checks that types cannot express; raise InputError naming the key and the fix."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise InputError(f"config: {msg}")

    need(cfg.stage in STAGES, f"stage {cfg.stage!r} must be one of {', '.join(STAGES)}")
    need(not (cfg.data.crop and cfg.data.cache_latents),
         "data.crop makes every clip a new one, so data.cache_latents would only grow; remove one of them")
    need(0 <= cfg.data.crop <= min(cfg.data.height, cfg.data.width),
         f"data.crop {cfg.data.crop} must be between 0 (off) and the frame size {cfg.data.height}x{cfg.data.width}")
    need(not (cfg.data.cache_latents and cfg.stage == "vae"),
         "data.cache_latents is for diffusion stages (the VAE is frozen there); remove it from stage vae")
    need(cfg.model.train in ("all", "temporal", "decoder"),
         f"model.train {cfg.model.train!r} must be 'all', 'temporal' (stage video) or 'decoder' (stage vae)")
    need(cfg.model.train != "decoder" or cfg.stage == "vae", "model.train 'decoder' is for stage vae only")
    need(cfg.model.lora_rank >= 0, "model.lora_rank must be >= 0")
    need(cfg.data.batch_size >= 1 and cfg.data.num_frames >= 1, "data.batch_size and data.num_frames must be >= 1")
    need(cfg.data.height % 8 == 0 and cfg.data.width % 8 == 0, "data.height and data.width must be multiples of 8")
    need(cfg.optim.schedule in ("constant", "cosine"), f"optim.schedule {cfg.optim.schedule!r}: 'constant' or 'cosine'")
    need(cfg.optim.grad_accum >= 1 and cfg.optim.lr > 0, "optim.grad_accum must be >= 1 and optim.lr > 0")
    need(cfg.loss.weighting in ("edm", "unit"), f"loss.weighting {cfg.loss.weighting!r}: 'edm' or 'unit'")
    need(cfg.loss.recon in ("l1", "mse"), f"loss.recon {cfg.loss.recon!r}: 'l1' or 'mse'")
    r = cfg.loss.still_bucket_range
    need(r == () or (len(r) == 2 and 0 <= r[0] <= r[1] <= 255),
         f"loss.still_bucket_range {list(r)}: [] or [lo, hi] with 0 <= lo <= hi <= 255")
    drops = (cfg.loss.cond_drop_prob, cfg.loss.text_drop_prob, cfg.loss.both_drop_prob)
    need(min(drops) >= 0.0 and sum(drops) <= 1.0,
         "loss.cond_drop_prob, loss.text_drop_prob and loss.both_drop_prob must be >= 0 and sum to <= 1")
    need(0.0 <= cfg.loss.text_token_drop_prob <= 1.0, "loss.text_token_drop_prob must be in [0, 1]")
    need(cfg.model.camera_head_captions >= 1, "model.camera_head_captions must be >= 1")
    need(0.0 <= cfg.ema.decay < 1.0, "ema.decay must be in [0, 1)")
    need(cfg.run.precision in ("auto", "fp32", "bf16", "fp16"), f"run.precision {cfg.run.precision!r}")
    need(cfg.run.device in ("auto", "cpu", "cuda"), f"run.device {cfg.run.device!r}: 'auto', 'cpu' or 'cuda'")
    need(cfg.run.distributed in ("ddp", "fsdp"), f"run.distributed {cfg.run.distributed!r}: 'ddp' or 'fsdp'")
    need(cfg.run.max_steps >= 1 and cfg.run.ckpt_every >= 1 and cfg.run.keep_last >= 1,
         "run.max_steps, run.ckpt_every and run.keep_last must be >= 1")
    need(set(cfg.run.export_layouts) <= {"original", "diffusers"}, "run.export_layouts: 'original' and/or 'diffusers'")


# ---------------------------------------------------------------------------------------------
# Reading: TOML tables -> dataclasses, strictly typed.


def _coerce(value: object, hint: object, key: str) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except InputError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(f"config: {key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return tuple(_coerce(v, item, key) for v in value)
        if len(value) != len(args):
            raise InputError(f"config: {key} must have {len(args)} entries, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise InputError(f"config: {key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, table: dict, section: str) -> object:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(f"config: unknown key {section}.{unknown[0]}; known keys: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()})


def from_dict(d: dict) -> TrainConfig:
    """A TrainConfig from nested tables (TOML/JSON shape); strict on keys and types."""
    unknown = sorted(set(d) - set(SECTIONS) - {"stage"})
    if unknown:
        raise InputError(f"config: unknown table or key {unknown[0]!r}; expected stage, {', '.join(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        table = d.get(name, {})
        if not isinstance(table, dict):
            raise InputError(f"config: [{name}] must be a table")
        parts[name] = _build(cls, table, name)
    stage = d.get("stage", "image")
    if not isinstance(stage, str):
        raise InputError("config: stage must be a string")
    return TrainConfig(stage=stage, **parts)


def load_config(path: str | Path, stage: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML config; `stage` (from the CLI) must agree with the file's `stage` if both are set.

    overrides: "section.key=value" strings, the value parsed as TOML (`optim.lr=3e-4`, `run.out_dir="x"`;
    a bare word that is not valid TOML is taken as a string).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}; pass --config FILE (see configs/)")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: invalid TOML ({e})") from None
    if stage is not None:
        if "stage" in d and d["stage"] != stage:
            raise InputError(f"{path} is a stage {d['stage']!r} config but --stage {stage} was given")
        d["stage"] = stage
    for item in overrides:
        apply_override(d, item)
    return from_dict(d)


def apply_override(d: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or "." not in key:
        raise InputError(f"override {item!r} must look like section.key=value")
    section, name = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    d.setdefault(section, {})[name] = value


# ---------------------------------------------------------------------------------------------
# Writing: the resolved config as TOML (tomllib only reads; the format here is flat and simple).


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        assert math.isfinite(v), "configs hold finite floats"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: TrainConfig) -> str:
    """The config as TOML; None values (stage defaults) are written as comments."""
    d = asdict(cfg)
    lines = [f"stage = {_toml_value(d.pop('stage'))}"]
    for section, table in d.items():
        lines += ["", f"[{section}]"]
        for k, v in table.items():
            lines.append(f"# {k} = (stage default)" if v is None else f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def resume_differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Keys that differ between a run's saved config and the one it is resumed with, and matter."""
    out = []
    for section in SECTIONS:
        a, b = asdict(getattr(old, section)), asdict(getattr(new, section))
        out += [f"{section}.{k}" for k in a if a[k] != b[k] and (section, k) not in RESUMABLE_CHANGES]
    if old.stage != new.stage:
        out.append("stage")
    return out


def with_overrides(cfg: TrainConfig, **sections: dict) -> TrainConfig:
    """Copy of `cfg` with some keys of some sections replaced (for tests and scripts)."""
    return replace(cfg, **{s: replace(getattr(cfg, s), **kv) for s, kv in sections.items()})

