"""Load, save and convert SVD checkpoints in the official single-file and the diffusers folder layouts.

Loading builds the model on the meta device, checks the file's key set and shapes strictly against
it, then reads one tensor at a time straight into its own memory (cast on the way) and assigns it,
so a checkpoint never sits in memory twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from kinetograph.errors import CheckpointError, InputError
from kinetograph.io import layout_sgm as sgm
from kinetograph.io.diffusers_unet import (
    unet_config_from_diffusers,
    unet_diffusers_config,
    unet_from_diffusers,
    unet_to_diffusers,
)
from kinetograph.io.diffusers_vae import (
    vae_config_from_diffusers,
    vae_diffusers_config,
    vae_from_diffusers,
    vae_to_diffusers,
)
from kinetograph.io.safetensors import SafetensorsReader, check_state_dict, load_state_dict, save_state_dict
from kinetograph.io.transformers_clip import (
    clip_config_from_transformers,
    clip_from_transformers,
    clip_to_transformers,
    clip_transformers_config,
)
from kinetograph.models.svd import SVD
from kinetograph.models.vae import VAE, VAEConfig
from kinetograph.presets import PRESETS, Preset, SamplingDefaults, SVDConfig, preset_for_file

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONFIG_KEY = "kinetograph.config"
PRESET_KEY = "kinetograph.preset"
# Sampling defaults a training run measured from its data (SamplingDefaults fields), over the preset's.
SAMPLING_KEY = "kinetograph.sampling"
EXTRAS_FILE = "kinetograph_extras.safetensors"


@dataclass
class Loaded:
    model: SVD
    preset: Preset
    layout: str  # "original" or "diffusers"


# ---------------------------------------------------------------------------------------------
# Tensor sources: key -> shape without reading data, then one tensor at a time.


@dataclass
class _Source:
    shapes: dict[str, tuple[int, ...]]
    _get: object = field(repr=False)  # (key, dtype, device) -> Tensor in its own memory
    metadata: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return self._get(key, dtype, device)


def _open_safetensors(path: Path, stack: ExitStack) -> _Source:
    reader = stack.enter_context(SafetensorsReader(path))
    return _Source(reader.shapes, reader.get, reader.metadata)


def _open_file(path: Path, stack: ExitStack, allow_pickle: bool) -> _Source:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; pass the path of a .safetensors file or a diffusers folder")
    if path.suffix.lower() == ".safetensors":
        return _open_safetensors(path, stack)
    # Pickle files: refused unless allowed, then loaded with weights_only (io.safetensors enforces both).
    sd = load_state_dict(path, allow_pickle=allow_pickle)
    return _Source({k: tuple(v.shape) for k, v in sd.items()}, lambda k, dtype, device: _cast(sd[k], device, dtype))


def _open_component(folder: Path, stem: str, stack: ExitStack, variant: str | None) -> _Source:
    """A diffusers component's weights: `stem[.variant].safetensors`, or a sharded index of them."""
    names = [f"{stem}.{variant}.safetensors"] if variant else []
    names += [f"{stem}.safetensors", f"{stem}.fp16.safetensors"]
    for name in names:
        if (folder / name).is_file():
            return _open_safetensors(folder / name, stack)
        index = folder / f"{name}.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            parts = {f: _open_safetensors(folder / f, stack) for f in sorted(set(weight_map.values()))}
            shapes = {k: parts[f].shapes[k] for k, f in weight_map.items()}
            return _Source(shapes, lambda k, dtype, device: parts[weight_map[k]].get(k, dtype, device))
    if any(folder.glob(f"{stem}*.bin")):
        raise CheckpointError(
            f"{folder}: only pickle .bin weights found; convert them to safetensors (refusing pickle by default)"
        )
    raise CheckpointError(f"{folder}: no {stem}.safetensors found; is this a complete diffusers folder?")


# ---------------------------------------------------------------------------------------------
# Shapes our model expects.


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _build_meta(cfg: SVDConfig) -> SVD:
    with torch.device("meta"):
        return SVD(cfg)


def sgm_expected_shapes(cfg: SVDConfig, model: SVD | None = None) -> dict[str, tuple[int, ...]]:
    """Every key of a complete official file for this configuration, with its shape."""
    model = model or _build_meta(cfg)
    with torch.device("meta"):
        vae_2d = VAE(VAEConfig(**{**cfg.vae.__dict__, "temporal_decoder": False}))
    decoder_2d = {k: s for k, s in _meta_shapes(vae_2d).items() if k.startswith("decoder.")}
    extras = sgm.extra_shapes(decoder_2d, cfg.vae.z_channels, cfg.clip.embed_dim, cfg.clip.embed_dim)
    return sgm.expected_shapes(_meta_shapes(model), extras)


def _assign(model: SVD, tensors: Iterator[tuple[str, torch.Tensor]], layout: str) -> SVD:
    sd = dict(tensors)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:  # shapes and keys were checked before: this is a bug, not user input
        raise AssertionError(f"{layout}: state dict mismatch after checks: {missing[:3]} {unexpected[:3]}")
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    assert not leftover, f"parameters left on meta: {leftover[:3]}"
    return model


def _read_parallel(
    src: _Source, wanted: list[tuple[str, str]], dtype: torch.dtype | None, device: str | torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) for each (our name, file key), read by a few threads: copying from the page
    cache and faulting in fresh memory is CPU work that one thread does at a third of disk speed."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        yield from zip((n for n, _ in wanted), pool.map(lambda nk: src.get(nk[1], dtype, device), wanted))


def _cast(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None) -> torch.Tensor:
    """A tensor of a pickle (a view of its memory-mapped file) into its own memory, cast on the way."""
    dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
    out = torch.empty(t.shape, dtype=dtype, device=device)
    out.copy_(t)
    return out


# ---------------------------------------------------------------------------------------------
# Detection and loading.


def detect_layout(path: Path) -> str:
    """'diffusers' for a folder with unet/ vae/ image_encoder/, 'original' for an sgm single file."""
    if path.is_dir():
        if (path / "unet").is_dir() and (path / "vae").is_dir():
            return "diffusers"
        raise CheckpointError(f"{path}: a folder but not a diffusers layout (no unet/ and vae/ inside)")
    return "original"


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    preset: str | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
) -> Loaded:
    """Load any supported checkpoint into an `SVD` in eval mode; strict on keys and shapes."""
    path = Path(path)
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; pass a .safetensors file or a diffusers folder")
    layout = detect_layout(path)
    with ExitStack() as stack:
        if layout == "diffusers":
            model, chosen = _load_diffusers(path, stack, device, dtype, preset, variant)
        else:
            model, chosen = _load_sgm(path, stack, device, dtype, preset, allow_pickle)
    return Loaded(model.eval().requires_grad_(False), chosen, layout)


def _load_sgm(path, stack, device, dtype, preset, allow_pickle) -> tuple[SVD, Preset]:
    src = _open_file(path, stack, allow_pickle)
    if not any(k.startswith(sgm.UNET) for k in src.shapes):
        hint = (
            "it looks like a diffusers component file; pass the diffusers folder instead"
            if any(k.startswith(("down_blocks.", "encoder.down_blocks.", "vision_model.")) for k in src.shapes)
            else "expected the official SVD single-file layout (keys model.diffusion_model.*)"
        )
        raise CheckpointError(f"{path.name}: unknown checkpoint layout: {hint}")
    temporal = sgm.FIRST_STAGE + "decoder.conv_out.time_mix_conv.weight" in src.shapes
    # The architecture comes from our metadata when present (our own files), else from the preset:
    # the official files carry no config, and svd / svd_xt share one architecture.
    cfg = SVDConfig.from_dict(json.loads(src.metadata[CONFIG_KEY])) if CONFIG_KEY in src.metadata else None
    base = PRESETS.get(src.metadata.get(PRESET_KEY, ""), preset_for_file(path.name, temporal))
    sampling = base.sampling
    if preset is not None:  # an explicit preset wins over what the file says
        base = PRESETS[preset]
        sampling = base.sampling
    elif SAMPLING_KEY in src.metadata:
        sampling = _sampling(base.sampling, json.loads(src.metadata[SAMPLING_KEY]), path.name)
    chosen = Preset(base.name, cfg or base.model, sampling)
    model = _build_meta(chosen.model)
    expected = sgm_expected_shapes(chosen.model, model)
    # Extras (the text leftovers, the conditioner's unused 2-D decoder) may be absent: diffusers has none.
    got = dict(src.shapes)
    for k in expected:
        if sgm.classify(k) == "extra" and k not in got:
            got[k] = expected[k]
    check_state_dict(expected, got, f"original SVD layout ({chosen.name})")

    wanted = [(name, key) for key in src.shapes if (name := sgm.sgm_to_ours(key)) is not None]
    _assign(model, _read_parallel(src, wanted, dtype, device), "original")
    dup_keys = [k for k in src.shapes if sgm.classify(k) == "duplicate"]
    _warn_if_duplicates_differ(model, src, dup_keys)
    return model, chosen


def _warn_if_duplicates_differ(model: SVD, src: _Source, keys: list[str]) -> None:
    params = model.state_dict()
    for key in keys:
        ours = params[sgm.duplicate_source(key)]
        if not torch.equal(src.get(key, ours.dtype), ours.cpu()):
            warnings.warn(
                f"{key} differs from its conditioner copy; using the conditioner's encoder (as sgm inference does)",
                stacklevel=3,
            )
            return


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e}); the diffusers folder is incomplete") from None


def _load_diffusers(folder: Path, stack, device, dtype, preset, variant) -> tuple[SVD, Preset]:
    image_dir = folder / "image_encoder"
    if not image_dir.is_dir():
        raise CheckpointError(f"{folder}: no image_encoder/ folder; an SVD diffusers folder has unet/, vae/, image_encoder/")
    cfg = SVDConfig(
        unet=unet_config_from_diffusers(_read_json(folder / "unet" / "config.json")),
        vae=vae_config_from_diffusers(_read_json(folder / "vae" / "config.json")),
        clip=clip_config_from_transformers(_read_json(image_dir / "config.json")),
    )
    info = _read_json(folder / "kinetograph.json") if (folder / "kinetograph.json").is_file() else {}
    base = PRESETS.get(preset or info.get("preset", ""), preset_for_file(folder.name, cfg.vae.temporal_decoder))
    sampling = base.sampling if preset is not None else _sampling(base.sampling, info.get("sampling", {}), folder.name)
    chosen = Preset(base.name, cfg, sampling)
    model = _build_meta(cfg)
    parts = [
        ("unet", folder / "unet", "diffusion_pytorch_model", unet_from_diffusers),
        ("vae", folder / "vae", "diffusion_pytorch_model", vae_from_diffusers),
        ("image_encoder", image_dir, "model", clip_from_transformers),
    ]
    loaded: dict[str, torch.Tensor] = {}
    for prefix, sub, stem, from_diffusers in parts:
        src = _open_component(sub, stem, stack, variant)
        expected = _meta_shapes(getattr(model, prefix))
        # Key maps only rename (and split/transpose CLIP's packed projections): map real tensors one component at a time.
        sd = {k: src.get(k, dtype, device) for k in src.shapes}
        ours = from_diffusers(sd)
        check_state_dict(expected, {k: tuple(v.shape) for k, v in ours.items()}, f"diffusers {prefix}/")
        loaded.update({f"{prefix}.{k}": v for k, v in ours.items()})
        del sd, ours
    _assign(model, iter(loaded.items()), "diffusers")
    return model, chosen


# ---------------------------------------------------------------------------------------------
# Saving and converting.


def _sampling(base: SamplingDefaults, overrides: dict, source: str) -> SamplingDefaults:
    """The preset's sampling defaults with a checkpoint's recorded ones on top."""
    known = {f.name for f in dataclasses.fields(SamplingDefaults)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown sampling defaults {unknown}; known: {sorted(known)}")
    return dataclasses.replace(base, **overrides)


def _preset_sampling(name: str) -> SamplingDefaults:
    return PRESETS[name].sampling if name in PRESETS else SamplingDefaults()


def recorded_sampling(preset: Preset) -> dict:
    """The sampling defaults of a loaded checkpoint that differ from its named preset's (what to keep
    when converting)."""
    base = _preset_sampling(preset.name)
    return {f.name: getattr(preset.sampling, f.name) for f in dataclasses.fields(SamplingDefaults)
            if getattr(preset.sampling, f.name) != getattr(base, f.name)}


def save_original(
    model: SVD, path: str | Path, preset: str, extras: dict[str, torch.Tensor] | None = None,
    sampling: dict | None = None,
) -> Path:
    """Write the official single-file layout, plus our config in the safetensors metadata.

    `sampling`: SamplingDefaults fields that override the preset's when the file is loaded
    (a training run records its data's size, frames, fps and median motion bucket)."""
    sd = sgm.to_sgm({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, extras)
    meta = {CONFIG_KEY: json.dumps(model.cfg.to_dict()), PRESET_KEY: preset}
    if sampling:
        _sampling(_preset_sampling(preset), sampling, str(path))
        meta[SAMPLING_KEY] = json.dumps(sampling)
    return save_state_dict(sd, Path(path), metadata=meta)


def _atomic_dir(dst: Path):
    dst = Path(dst)
    if dst.exists():
        raise InputError(f"{dst} already exists; choose a new output folder or remove it first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))


def save_diffusers(
    model: SVD, folder: str | Path, preset: str, extras: dict[str, torch.Tensor] | None = None,
    sampling: dict | None = None,
) -> Path:
    """Write a diffusers StableVideoDiffusionPipeline folder (loadable by diffusers' from_pretrained)."""
    folder = Path(folder)
    if model.cfg.unet.text_dim:
        raise CheckpointError(
            "text-conditioned kinetograph models have no diffusers equivalent (diffusers' SVD UNet has no text "
            "branch); keep the original single-file layout"
        )
    if model.cfg.image_anchor:
        raise CheckpointError(
            "image-anchored kinetograph models have no diffusers equivalent (diffusers' SVD pipeline denoises "
            "the latents themselves, not relative to the image); keep the original single-file layout"
        )
    if model.cfg.unet.scale_shift_norm:
        raise CheckpointError(
            "kinetograph models with scale-shift res blocks (unet.scale_shift_norm) have no diffusers equivalent "
            "(diffusers' SVD UNet adds the embedding as a bias); keep the original single-file layout"
        )
    tmp = _atomic_dir(folder)
    try:
        cfg = model.cfg
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".")}

        vae_class = "AutoencoderKLTemporalDecoder" if cfg.vae.temporal_decoder else "AutoencoderKL"
        files = [
            ("unet", "diffusion_pytorch_model", unet_to_diffusers(part("unet")), unet_diffusers_config(cfg.unet)),
            ("vae", "diffusion_pytorch_model", vae_to_diffusers(part("vae")), vae_diffusers_config(cfg.vae)),
            ("image_encoder", "model", clip_to_transformers(part("image_encoder")), clip_transformers_config(cfg.clip)),
        ]
        for sub, stem, tensors, config in files:
            (tmp / sub).mkdir()
            save_state_dict({k: v.contiguous() for k, v in tensors.items()}, tmp / sub / f"{stem}.safetensors", metadata={"format": "pt"})
            (tmp / sub / "config.json").write_text(json.dumps(config, indent=2))
        _write_pipeline_files(tmp, vae_class)
        info = {"preset": preset, **({"sampling": sampling} if sampling else {})}
        (tmp / "kinetograph.json").write_text(json.dumps(info, indent=2))
        if extras:
            save_state_dict(extras, tmp / EXTRAS_FILE)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_pipeline_files(folder: Path, vae_class: str) -> None:
    """model_index.json, scheduler and feature extractor configs, as the released diffusers repos ship."""
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableVideoDiffusionPipeline",
                "feature_extractor": ["transformers", "CLIPImageProcessor"],
                "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
                "vae": ["diffusers", vae_class],
            },
            indent=2,
        )
    )
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    (folder / "feature_extractor").mkdir()
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(FEATURE_EXTRACTOR, indent=2))


SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def read_extras(path: Path) -> dict[str, torch.Tensor]:
    """The keys of a checkpoint that our model does not use, so conversions lose nothing."""
    if path.is_dir():
        f = path / EXTRAS_FILE
        return load_state_dict(f) if f.is_file() else {}
    with ExitStack() as stack:
        src = _open_file(path, stack, allow_pickle=False)
        return {k: src.get(k) for k in src.shapes if sgm.classify(k) == "extra"}


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert(
    src: str | Path, dst: str | Path, to: str, *, allow_pickle: bool = False, dtype: str | None = None
) -> Path:
    """Convert between the official single file and the diffusers folder.

    Each tensor keeps its dtype, unless `dtype` ("float32", "float16", "bfloat16") is given: then
    every floating-point tensor is stored in it (float16 halves a float32 file; the official
    files are float16 already).
    """
    src, dst = Path(src), Path(dst)
    if to not in ("diffusers", "original"):
        raise InputError(f"--to must be 'diffusers' or 'original', not {to!r}")
    if dtype is not None and dtype not in _DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    if dst.exists():
        raise InputError(f"{dst} already exists; choose a new output path or remove it first")
    loaded = load_checkpoint(src, dtype=None, allow_pickle=allow_pickle)
    extras = read_extras(src) if src.suffix.lower() not in PICKLE_SUFFIXES else {}
    if dtype is not None:
        target = _DTYPES[dtype]
        loaded.model.to(target)  # floating-point parameters and buffers only
        extras = {k: v.to(target) if v.is_floating_point() else v for k, v in extras.items()}
    if to == "diffusers":
        return save_diffusers(loaded.model, dst, loaded.preset.name, extras, recorded_sampling(loaded.preset))
    if dst.suffix != ".safetensors":
        raise InputError(f"{dst}: the original layout is a single .safetensors file; name the output *.safetensors")
    return save_original(loaded.model, dst, loaded.preset.name, extras, recorded_sampling(loaded.preset))
