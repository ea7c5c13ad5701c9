"""The camera head: the UNet reads a camera move off the pooled text vector (zero effect at
init), is fitted on the training captions and frozen, samples without tokens by default, and
tells the user how it read the prompt."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image
from skimage import data as skdata

from kinetograph.data.camera_motion import CANONICAL_CAPTIONS, MOTIONS, paraphrase
from kinetograph.errors import InputError
from kinetograph.io.checkpoint import load_checkpoint, save_original
from kinetograph.models.svd import SVD
from kinetograph.models.unet import UNetConfig, VideoUNet
from kinetograph.pipeline.image_to_video import CAMERA_PROMPT_MIN, ImageToVideo
from kinetograph.presets import PRESETS
from kinetograph.training.camera import (HEAD_WORDINGS, add_camera_head, camera_captions, fit_camera_head,
                                        head_place_wordings, head_wordings)
from kinetograph.training.config import from_dict
from kinetograph.training.loop import build_model, train
from kinetograph.training.rng import SampleRNG
from kinetograph.training.stages import make_stage

BASE = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                  num_head_channels=16, context_dim=32, adm_in_channels=3 * 16, text_dim=24)
CAMERA = dataclasses.replace(BASE, camera_moves=len(MOTIONS))
B, T, N = 2, 3, 5


def _inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(B * T, BASE.in_channels, 8, 8, generator=g), timesteps=torch.randn(B * T, generator=g),
                context=torch.randn(B * T, 1, BASE.context_dim, generator=g),
                y=torch.randn(B * T, BASE.adm_in_channels, generator=g), num_video_frames=T,
                image_only_indicator=torch.zeros(B, T))


def _text(seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(text_tokens=torch.randn(B * T, N, BASE.text_dim, generator=g),
                text_mask=torch.ones(B * T, N, dtype=torch.bool),
                text_pooled=torch.randn(B * T, BASE.text_dim, generator=g))


def test_camera_head_needs_text_and_starts_as_a_no_op():
    with pytest.raises(ValueError, match="text branch"):
        dataclasses.replace(BASE, text_dim=0, camera_moves=7)
    plain = randomize_(VideoUNet(BASE), seed=0, std=0.1).eval()
    torch.manual_seed(0)
    camera = VideoUNet(CAMERA).eval()
    missing, unexpected = camera.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["camera_emb.bias", "camera_emb.weight",
                                                  "camera_head.bias", "camera_head.weight"]
    with torch.no_grad():
        torch.testing.assert_close(camera(**_inputs(), **_text()), plain(**_inputs(), **_text()), atol=0, rtol=0)


def test_camera_probabilities_join_the_embedding_only_where_there_is_a_caption():
    unet = randomize_(VideoUNet(CAMERA), seed=3, std=0.1).eval()
    text = _text()
    with torch.no_grad():
        out = unet(**_inputs(), **text)
        # Another pooled vector the head reads differently changes the output...
        other = {**text, "text_pooled": -text["text_pooled"]}
        assert (unet(**_inputs(), **other) - out).abs().max() > 1e-3
        # ...and so does silencing the camera embedding alone.
        saved = unet.camera_emb.weight.clone()
        unet.camera_emb.weight.zero_()
        unet.camera_emb.bias.zero_()
        assert (unet(**_inputs(), **text) - out).abs().max() > 1e-4
        unet.camera_emb.weight.copy_(saved)
        # The head reads the direction of the pooled vector, not its length.
        torch.testing.assert_close(unet.camera_logits(text["text_pooled"] * 3), unet.camera_logits(text["text_pooled"]))


def test_camera_gate_scales_the_heads_reading_into_the_embedding():
    """A gate sure the prompt names no move silences the camera embedding; one sure it names a
    move leaves the output of the same network without a gate."""
    with pytest.raises(ValueError, match="camera_gate needs a camera head"):
        dataclasses.replace(BASE, camera_gate=True)
    gated = randomize_(VideoUNet(dataclasses.replace(CAMERA, camera_gate=True)), seed=3, std=0.1).eval()
    plain = VideoUNet(CAMERA).eval()
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["camera_gate.bias", "camera_gate.weight"]
    silent = copy.deepcopy(gated)
    with torch.no_grad():
        silent.camera_emb.weight.zero_()
        silent.camera_emb.bias.zero_()
        gated.camera_gate.weight.zero_()
        gated.camera_gate.bias.fill_(-60.0)  # "names no move"
        torch.testing.assert_close(gated(**_inputs(), **_text()), silent(**_inputs(), **_text()), atol=1e-6, rtol=0)
        gated.camera_gate.bias.fill_(60.0)  # "names a move"
        torch.testing.assert_close(gated(**_inputs(), **_text()), plain(**_inputs(), **_text()), atol=1e-6, rtol=0)
        assert (gated(**_inputs(), **_text()) - silent(**_inputs(), **_text())).abs().max() > 1e-4


def test_masked_tokens_keep_the_pooled_path_and_a_zero_pooled_vector_is_no_text():
    unet = randomize_(VideoUNet(CAMERA), seed=3, std=0.1).eval()
    text = _text()
    no_tokens = {**text, "text_mask": torch.zeros(B * T, N, dtype=torch.bool)}
    no_text = {**no_tokens, "text_pooled": torch.zeros(B * T, BASE.text_dim)}
    with torch.no_grad():
        image_only = unet(**_inputs())
        pooled_only = unet(**_inputs(), **no_tokens)
        full = unet(**_inputs(), **text)
        torch.testing.assert_close(unet(**_inputs(), **no_text), image_only, atol=1e-5, rtol=0)
        assert (pooled_only - image_only).abs().max() > 1e-3  # the pooled vector and camera head still act
        assert (full - pooled_only).abs().max() > 1e-3  # the tokens add their own part
        # Token values no longer matter once masked out.
        junk = {**no_tokens, "text_tokens": torch.full_like(text["text_tokens"], 50.0)}
        torch.testing.assert_close(unet(**_inputs(), **junk), pooled_only, atol=1e-5, rtol=0)


def test_fit_is_deterministic_logistic_regression():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(len(MOTIONS), 16, generator=g) * 3
    labels = torch.arange(len(MOTIONS)).repeat(20)
    x = centres[labels] + torch.randn(len(labels), 16, generator=g)
    a, b = torch.nn.Linear(16, len(MOTIONS)), torch.nn.Linear(16, len(MOTIONS))
    assert fit_camera_head(a, x, labels, steps=300) == 1.0
    fit_camera_head(b, x, labels, steps=300)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    held_out = centres + 0.3 * torch.randn(len(MOTIONS), 16, generator=g)
    assert torch.equal(a(torch.nn.functional.normalize(held_out, dim=-1)).argmax(1), torch.arange(len(MOTIONS)))


def _camera_manifest(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"kind": "camera", "key": f"c{i}", "shard": "s.tar", "subject": "a cat",
             "move": {"kind": kind, "speed_class": "static" if kind == "static" else "slow"}}
            for i, kind in enumerate(MOTIONS)]
    rows.append({"kind": "video", "key": "v", "shard": "s.tar", "caption": "a river"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_captions_come_from_the_camera_clips_with_their_moves(tmp_path):
    root = _camera_manifest(tmp_path / "d")
    captions, labels = camera_captions(root, per_clip=3, seed=0)
    assert len(captions) == 3 * len(MOTIONS) and labels.tolist() == [i for i in range(len(MOTIONS)) for _ in range(3)]
    rng = np.random.default_rng(0)
    assert captions[0] == paraphrase("static", "static", "a cat", rng)  # the training captions' grammar
    assert captions == camera_captions(root, per_clip=3, seed=0)[0]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "manifest.jsonl").write_text(json.dumps({"kind": "video", "key": "v", "shard": "s"}) + "\n")
    with pytest.raises(InputError, match="no camera clips"):
        camera_captions(tmp_path / "e", per_clip=3)


@pytest.fixture(scope="module")
def camera_model(tmp_path_factory):
    root = _camera_manifest(tmp_path_factory.mktemp("cam") / "d")
    base = randomize_(SVD(PRESETS["tiny_text"].model), seed=5, std=0.05).eval()
    return base, add_camera_head(base, root, per_clip=24), root


def test_add_camera_head_keeps_the_model_and_reads_unseen_wordings(camera_model):
    base, model, _ = camera_model
    assert model.cfg.unet.camera_moves == len(MOTIONS) and base.cfg.unet.camera_moves == 0
    g = torch.Generator().manual_seed(0)
    t = 2
    args = (torch.randn(t, 8, 8, 8, generator=g), torch.ones(t), torch.randn(t, 1, 32, generator=g),
            torch.randn(t, 48, generator=g), t, torch.zeros(1, t))
    text = dict(text_tokens=torch.randn(t, 5, 384, generator=g), text_mask=torch.ones(t, 5, dtype=torch.bool),
                text_pooled=torch.randn(t, 384, generator=g))
    with torch.no_grad():
        assert torch.equal(base.unet(*args, **text), model.unet(*args, **text))
    pipe = ImageToVideo(model, PRESETS["tiny_text"])
    for prompt, move in [("the camera zooms in on the dog", "zoom_in"), ("a slow pan to the right", "pan_right"),
                         ("static camera, nothing moves", "static")]:
        reading = pipe.camera_reading(prompt)
        assert set(reading.probs) == set(MOTIONS) and abs(sum(reading.probs.values()) - 1) < 1e-5
        assert reading.asked == move, (prompt, reading)
    assert ImageToVideo(base, PRESETS["tiny_text"]).camera_reading("zoom in") is None
    assert add_camera_head(model, "/nonexistent") is model  # a model that has one keeps it
    # Its gate reads prompts that describe only the picture, written blind (tests/data), as naming
    # no move, where the head alone read most of them as some move.
    held = json.loads((Path(__file__).parent / "data" / "scene_prompts.json").read_text())
    scenes = held["scene"] + held["subject_motion"]
    readings = [pipe.camera_reading(t) for t in scenes]
    assert np.mean([r.asked is None for r in readings]) >= 0.9
    assert np.mean([r.p >= CAMERA_PROMPT_MIN for r in readings]) >= 0.3  # what the gate saves them from
    # The head is fitted on HEAD_WORDINGS too: it reads (nearly) every one of them as its move.
    texts, labels = head_wordings()
    assert len(texts) > 200 and sorted(set(labels.tolist())) == list(range(len(MOTIONS)))
    read = [r.move for r in map(pipe.camera_reading, HEAD_WORDINGS["zoom_in"] + HEAD_WORDINGS["zoom_out"])]
    want = ["zoom_in"] * len(HEAD_WORDINGS["zoom_in"]) + ["zoom_out"] * len(HEAD_WORDINGS["zoom_out"])
    assert np.mean([a == b for a, b in zip(read, want)]) >= 0.95
    # ... and the place-named tilts, whose frames ("the camera turns toward {}") name no direction.
    places = head_place_wordings()
    read = [r.move for r in map(pipe.camera_reading, places["tilt_up"] + places["tilt_down"])]
    want = ["tilt_up"] * len(places["tilt_up"]) + ["tilt_down"] * len(places["tilt_down"])
    assert np.mean([a == b for a, b in zip(read, want)]) >= 0.95


def test_refit_fits_only_the_head_again(camera_model):
    _, model, root = camera_model
    before = copy.deepcopy(model)
    with torch.no_grad():
        model_copy = copy.deepcopy(model)
        model_copy.unet.camera_head.weight.zero_()  # a head that reads nothing
    refitted = add_camera_head(model_copy, root, per_clip=24, refit=True)
    assert refitted is model_copy
    for (name, a), b in zip(before.state_dict().items(), refitted.state_dict().values()):
        # The same captions and wordings from zero weights: the same head; nothing else moved.
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_head_without_a_gate_gets_one_and_keeps_its_head(camera_model, tmp_path):
    """A camera model from before the gate (as the default model shipped until session 19) gets
    a gate fitted and nothing else changed; `kinetograph camera-head` does the same to a file."""
    _, model, root = camera_model
    old_cfg = dataclasses.replace(model.cfg, unet=dataclasses.replace(model.cfg.unet, camera_gate=False))
    old = SVD(old_cfg).eval()
    old.load_state_dict({k: v for k, v in model.state_dict().items() if ".camera_gate." not in k})
    with torch.no_grad():
        old.unet.camera_head.weight.mul_(2)  # a head its captions would not fit again
    grown = add_camera_head(old, root, per_clip=24)
    assert grown.cfg.unet.camera_gate and grown is not old
    for name, value in old.state_dict().items():
        assert torch.equal(grown.state_dict()[name], value), name
    torch.testing.assert_close(grown.unet.camera_gate.weight, model.unet.camera_gate.weight, atol=1e-6, rtol=0)


def test_camera_model_samples_with_the_captions_wording_of_the_move_it_reads(camera_model, tmp_path, monkeypatch):
    _, model, _ = camera_model
    model = copy.deepcopy(model)  # the head and gate stay as fitted, every other weight random
    fitted = {k: v.clone() for k, v in model.state_dict().items() if ".camera_head." in k or ".camera_gate." in k}
    randomize_(model, seed=9, std=0.05).eval()  # every text weight acts now
    model.load_state_dict(fitted, strict=False)
    path = save_original(model, tmp_path / "cam.safetensors", "tiny_text")
    loaded = load_checkpoint(path)
    assert loaded.model.cfg.unet.camera_moves == len(MOTIONS)
    pipe = ImageToVideo(loaded.model, loaded.preset)
    prompt = "the camera zooms in slowly toward the dog"  # the head (fitted on 7 clips) reads a zoom in
    assert pipe.camera_caption(prompt) == CANONICAL_CAPTIONS["zoom_in"]
    import kinetograph.pipeline.image_to_video as i2v

    monkeypatch.setattr(i2v, "CAMERA_PROMPT_MIN", 1.01)  # a reading below the threshold: the prompt as written
    assert pipe.camera_caption(prompt) is None
    monkeypatch.setattr(i2v, "CAMERA_PROMPT_MIN", CAMERA_PROMPT_MIN)
    photo = Image.fromarray(skdata.astronaut()).resize((64, 64))
    kw = dict(height=64, width=64, num_frames=2, num_inference_steps=2, seed=0, output_type="latent")
    default = pipe(photo, prompt, **kw)
    assert torch.equal(default, pipe(photo, CANONICAL_CAPTIONS["zoom_in"], camera_prompt=False, **kw))
    as_written = pipe(photo, prompt, camera_prompt=False, **kw)
    assert not torch.equal(default, as_written)
    # Tokens are read by default; without them only the pooled vector and the camera head act.
    assert torch.equal(as_written, pipe(photo, prompt, camera_prompt=False, text_tokens=True, **kw))
    assert not torch.equal(as_written, pipe(photo, prompt, camera_prompt=False, text_tokens=False, **kw))
    # With a preset's camera prior, one reading of the prompt sets both the caption and the move.
    from kinetograph.presets import with_sampling

    prior = ImageToVideo(loaded.model, with_sampling(loaded.preset, camera_prior=0.5))
    reads = []
    monkeypatch.setattr(prior, "camera_reading", lambda text: reads.append(text) or pipe.camera_reading(text))
    got = prior(photo, prompt, **kw)
    assert reads == [prompt]
    assert torch.equal(got, pipe(photo, CANONICAL_CAPTIONS["zoom_in"], camera_prompt=False, camera_move="zoom_in",
                                 camera_prior=0.5, **kw))


def test_canonical_captions_name_their_move_in_training_words():
    from kinetograph.eval.prompts import expected_motion

    moves = {"static": "static", "pan_left": "left", "pan_right": "right", "tilt_up": "up", "tilt_down": "down",
             "zoom_in": "zoom_in", "zoom_out": "zoom_out"}
    assert set(CANONICAL_CAPTIONS) == set(MOTIONS)
    for move, caption in CANONICAL_CAPTIONS.items():
        assert expected_motion(caption) == moves[move], caption


def _tiny_cfg(root: Path, out: Path, init: str = "", **loss):
    return from_dict({
        "stage": "finetune",
        "model": {"preset": "tiny_text", "init": init, "camera_head": True, "camera_head_captions": 4},
        "data": {"root": str(root), "num_frames": 2, "height": 32, "width": 32, "batch_size": 4, "kinds": ["camera"]},
        "loss": loss,
        "run": {"out_dir": str(out), "max_steps": 2, "ckpt_every": 2, "val_count": 0, "progress": False,
                "tensorboard": False, "threads": 2},
    })


def test_token_drop_keeps_pooled_vectors_and_draws_only_when_set(camera_model, tmp_path):
    _, _, root = camera_model
    batch = {"video": torch.rand(4, 2, 3, 32, 32) * 2 - 1, "caption": ["pan left", "zoom in", "tilt up", "still"],
             "fps": torch.full((4,), 8.0), "motion_bucket": torch.full((4,), 100)}
    drops = dict(cond_drop_prob=0.0, text_drop_prob=0.0, both_drop_prob=0.0)
    conds = {}
    for p in (0.0, 1.0):
        cfg = _tiny_cfg(root, tmp_path / f"r{p}", text_token_drop_prob=p, **drops)
        stage = make_stage(cfg)
        model, _ = build_model(cfg, stage)
        conds[p] = stage.encode(model, batch, SampleRNG(0, [0, 1, 2, 3])).cond
    assert conds[0.0].text_mask.any(dim=1).all() and not conds[1.0].text_mask.any()
    assert conds[1.0].text_pooled.abs().sum(dim=1).gt(0).all()
    torch.testing.assert_close(conds[1.0].text_pooled, conds[0.0].text_pooled)


def test_training_fits_the_head_once_and_never_trains_it(tmp_path):
    from kinetograph.data.build import build

    data = tmp_path / "data"
    build(data, "tiny", seed=0, workers=1, progress=False)
    # From random weights everywhere, so that the loss reaches the new layer from the first step.
    init = save_original(randomize_(SVD(PRESETS["tiny_text"].model), seed=2, std=0.05), tmp_path / "i.safetensors",
                         "tiny_text")
    cfg = _tiny_cfg(data, tmp_path / "run", str(init), text_token_drop_prob=0.5)
    fitted, _ = build_model(cfg, make_stage(cfg))
    result = train(cfg)
    trained = load_checkpoint(result.exports[0]).model
    assert trained.cfg.unet.camera_moves == len(MOTIONS)
    assert torch.equal(trained.unet.camera_head.weight, fitted.unet.camera_head.weight)
    assert trained.cfg.unet.camera_gate and torch.equal(trained.unet.camera_gate.weight, fitted.unet.camera_gate.weight)
    assert trained.unet.camera_emb.weight.abs().sum() > 0  # zero at the start, trained since
    # Saved with the checkpoint, so a resume or export reads this fit back instead of fitting again.
    from safetensors.torch import load_file

    saved = load_file(next((tmp_path / "run" / "checkpoints").glob("step-*")) / "model.safetensors")
    assert torch.equal(saved["unet.camera_head.weight"], fitted.unet.camera_head.weight)


def test_cli_camera_head_writes_a_model_that_reads_prompts(camera_model, tmp_path, capsys):
    from kinetograph.cli import main

    base, _, root = camera_model
    src = save_original(base, tmp_path / "text.safetensors", "tiny_text", sampling={"motion_bucket_id": 99})
    out = tmp_path / "cam.safetensors"
    assert main(["camera-head", str(src), "--data", str(root), "-o", str(out), "--captions", "24"]) == 0
    loaded = load_checkpoint(out)
    assert loaded.model.cfg.unet.camera_moves == len(MOTIONS) and loaded.preset.sampling.motion_bucket_id == 99
    assert ImageToVideo(loaded.model, loaded.preset).camera_caption("a slow pan to the right") == \
        CANONICAL_CAPTIONS["pan_right"]
    # A text-blind model: one line naming the problem, no file.
    blind = save_original(SVD(PRESETS["tiny"].model), tmp_path / "blind.safetensors", "tiny")
    capsys.readouterr()
    code = main(["camera-head", str(blind), "--data", str(root), "-o", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "needs a text model" in err[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_generate_says_what_the_head_read_and_samples_with_it(camera_model, tmp_path, capsys):
    from kinetograph.cli import main
    from kinetograph.io.video import read_video

    base, model, _ = camera_model
    path = save_original(model, tmp_path / "cam.safetensors", "tiny_text")
    photo = tmp_path / "photo.png"
    Image.fromarray(skdata.astronaut()).resize((64, 64)).save(photo)
    args = ["--checkpoint", str(path), "--height", "64", "--width", "64", "--frames", "2", "--steps", "2",
            "--seed", "0"]
    capsys.readouterr()
    assert main(["generate", str(photo), "--prompt", "a slow pan to the right", "-o", str(tmp_path / "a.gif"), *args]) == 0
    err = capsys.readouterr().err
    assert ("camera: the prompt reads as pan right" in err
            and f"sampling with {CANONICAL_CAPTIONS['pan_right']!r}" in err)
    assert main(["generate", str(photo), "--prompt", CANONICAL_CAPTIONS["pan_right"], "--no-camera-prompt",
                 "-o", str(tmp_path / "b.gif"), *args]) == 0
    assert np.array_equal(read_video(tmp_path / "a.gif")[0], read_video(tmp_path / "b.gif")[0])
    # A prompt that only describes the picture: no move named, sampled as written.
    assert main(["generate", str(photo), "--prompt", "a cat on a sofa", "-o", str(tmp_path / "c.gif"), *args]) == 0
    err = capsys.readouterr().err
    assert "camera: the prompt names no camera move" in err and "sampling with the prompt as written" in err
    assert main(["generate", str(photo), "--prompt", "a cat on a sofa", "--no-camera-prompt",
                 "-o", str(tmp_path / "d.gif"), *args]) == 0
    assert np.array_equal(read_video(tmp_path / "c.gif")[0], read_video(tmp_path / "d.gif")[0])


def test_eval_generator_reports_what_the_head_read(camera_model, tmp_path):
    """`kinetograph eval`'s generator tells the report what the head read and what it sampled with;
    with --no-camera-prompt, nothing (the prompt is used as it is)."""
    from kinetograph.cli import _make_generate_fn

    _, model, _ = camera_model
    path = save_original(model, tmp_path / "cam.safetensors", "tiny_text")
    reading = _make_generate_fn(path, {}).read_prompt("a slow pan to the right")
    assert reading["move"] == "pan_right" and 0.5 <= reading["p"] <= 1
    assert reading["sampled_prompt"] == CANONICAL_CAPTIONS["pan_right"] and reading["camera_prior"] == 0.0
    assert _make_generate_fn(path, {"camera_prompt": False}).read_prompt("a slow pan to the right") is None
    # --camera-prior: the prompt the head reads samples from the image moved that way
    generate = _make_generate_fn(path, {"camera_prior": 0.5, "height": 64, "width": 64, "num_frames": 4,
                                        "num_inference_steps": 2})
    assert generate.read_prompt("a slow pan to the right")["camera_prior"] == 0.5
    photo = tmp_path / "photo.png"
    Image.fromarray(skdata.astronaut()).resize((64, 64)).save(photo)
    assert generate(photo, "a slow pan to the right", 127, 0).shape == (4, 64, 64, 3)
