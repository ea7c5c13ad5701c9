"""Camera-motion clips generated from real photos: pans, tilts and zooms at known speed.

Each clip is a moving crop window over a still photo, rendered with one affine warp per frame.
The true motion is known exactly, so it is recorded with the clip and, through the same
`MotionBucketMap` that curation uses, sets the clip's motion bucket: the bucket of a generated
clip is the bucket its true speed would get if curation measured it perfectly.

Speed is in curation's score units: mean image motion in % of frame width per second (see
curation/motion.py). Direction follows film language: "pan left" turns the camera left, so the
picture content moves right in frame; "tilt up" moves content down; "zoom in" magnifies.
Everything is deterministic from a seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from kinetograph.data.sources import PHOTOS, Photo, load_photo

MOTIONS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out")
# Content motion direction (dx, dy) in the frame for each translating move.
CONTENT_DIRECTION = {"pan_left": (1, 0), "pan_right": (-1, 0), "tilt_up": (0, 1), "tilt_down": (0, -1)}


@dataclass(frozen=True)
class CameraMove:
    kind: str  # one of MOTIONS
    speed: float  # mean image motion, % of frame width per second (0 for static)

    def __post_init__(self) -> None:
        assert self.kind in MOTIONS, self.kind
        assert self.speed >= 0 and (self.kind != "static" or self.speed == 0), self


@dataclass(frozen=True)
class CameraMotionConfig:
    height: int = 256
    width: int = 384
    num_frames: int = 25
    fps: float = 8.0
    # Speed classes (uniform ranges in % of frame width per second) and the words that name them.
    speeds: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"slow": (2.0, 5.0), "fast": (12.0, 24.0)}
    )
    max_zoom: float = 2.5  # guard: a zoom never magnifies more than this over one clip


@dataclass
class CameraClip:
    key: str  # "<photo>-<kind>-<speed class>-<n>"
    frames: np.ndarray  # (t, h, w, 3) uint8
    fps: float
    caption: str
    move: CameraMove
    speed_class: str  # "static", "slow" or "fast"
    photo: str
    subject: str = ""  # the phrase the caption names the scene with (for `paraphrase`)


def _mean_radius(width: int, height: int) -> float:
    """Mean distance of a pixel from the frame centre, in pixels (for zoom flow)."""
    u = np.arange(width) + 0.5 - width / 2
    v = np.arange(height) + 0.5 - height / 2
    return float(np.sqrt(u[None, :] ** 2 + v[:, None] ** 2).mean())


def render(photo: np.ndarray, move: CameraMove, cfg: CameraMotionConfig, rng: np.random.Generator) -> np.ndarray:
    """Render a move over a photo (h, w, 3) uint8 -> frames (t, cfg.height, cfg.width, 3) uint8.

    The crop window is as large as the whole trajectory allows (least upscaling); where it starts
    within the photo is drawn from rng.
    """
    H, W, T = cfg.height, cfg.width, cfg.num_frames
    src_h, src_w = photo.shape[:2]
    px = move.speed / 100.0 * W / cfg.fps  # content motion, output pixels per frame
    if move.kind.startswith("zoom"):
        # Exponential zoom: flow at radius rho is rho * rate, so rate = speed / mean radius.
        rate = move.speed / 100.0 * W / _mean_radius(W, H) / cfg.fps  # log-scale change per frame
        rate = min(rate, math.log(cfg.max_zoom) / max(T - 1, 1))
        log_s = -rate * np.arange(T) if move.kind == "zoom_in" else rate * np.arange(T)
        s_max = min(src_w / W, src_h / H)  # source pixels per output pixel, whole photo in view
        scale = s_max * np.exp(log_s - log_s.max())  # (t,) largest window = the whole fit
        cx = np.full(T, src_w / 2 + rng.uniform(-0.5, 0.5) * (src_w - scale.max() * W))
        cy = np.full(T, src_h / 2 + rng.uniform(-0.5, 0.5) * (src_h - scale.max() * H))
    else:
        dx, dy = CONTENT_DIRECTION.get(move.kind, (0, 0))
        travel = px * (T - 1)  # output pixels crossed over the clip
        s = min(src_w / (W + abs(dx) * travel), src_h / (H + abs(dy) * travel))
        scale = np.full(T, s)
        # The window moves opposite to the content: content right (pan left) = window left.
        span_x, span_y = src_w - s * (W + abs(dx) * travel), src_h - s * (H + abs(dy) * travel)
        x0 = s * W / 2 + rng.uniform(0, 1) * span_x + (s * travel if dx > 0 else 0)
        y0 = s * H / 2 + rng.uniform(0, 1) * span_y + (s * travel if dy > 0 else 0)
        cx = x0 - dx * s * px * np.arange(T)
        cy = y0 - dy * s * px * np.arange(T)
    # Downscaling by warping aliases; pre-shrink the photo so the largest window is ~1:1.
    shrink = max(1.0, float(scale.max()))
    if shrink > 1.0:
        photo = cv2.resize(photo, (round(src_w / shrink), round(src_h / shrink)), interpolation=cv2.INTER_AREA)
        scale, cx, cy = scale / shrink, cx / shrink, cy / shrink
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        # Output pixel centre (u+0.5, v+0.5) -> source point; OpenCV samples at integer coordinates.
        a = scale[t]
        m = np.array([[a, 0.0, cx[t] - a * W / 2 + 0.5 * a - 0.5], [0.0, a, cy[t] - a * H / 2 + 0.5 * a - 0.5]])
        frames[t] = cv2.warpAffine(
            photo, m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
    return frames


def fixed_point(kind: str) -> tuple[float, float] | None:
    """The one point a move leaves in place, as (y, x) fractions of the frame: the centre for a
    zoom (`render` scales about it); None for pans and tilts (every point moves) and for a still
    camera (every point stays). A window cut from a zoom is the same move only when centred
    there: off centre it zooms and pans at once, and the caption would name half of it."""
    return (0.5, 0.5) if kind.startswith("zoom") else None


def true_speed(move: CameraMove, cfg: CameraMotionConfig) -> float:
    """The speed the rendered clip really has (zoom may be capped by max_zoom)."""
    if not move.kind.startswith("zoom"):
        return move.speed
    r = _mean_radius(cfg.width, cfg.height)
    rate = move.speed / 100.0 * cfg.width / r / cfg.fps
    rate = min(rate, math.log(cfg.max_zoom) / max(cfg.num_frames - 1, 1))
    return rate * r / cfg.width * 100.0 * cfg.fps


# Several paraphrases per class: {s} subject, {adv} speed adverb, {adj} speed adjective.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "static": (
        "A still shot of {s}.",
        "{S}, static camera, no movement.",
        "The camera holds steady on {s}.",
        "A locked-off shot of {s}.",
    ),
    "pan_left": (
        "The camera pans {adv} to the left across {s}.",
        "{S}, {adj} pan left.",
        "A {adj} leftward pan over {s}.",
        "The view sweeps {adv} left over {s}.",
    ),
    "pan_right": (
        "The camera pans {adv} to the right across {s}.",
        "{S}, {adj} pan right.",
        "A {adj} rightward pan over {s}.",
        "The view sweeps {adv} right over {s}.",
    ),
    "tilt_up": (
        "The camera tilts {adv} upward over {s}.",
        "{S}, {adj} tilt up.",
        "A {adj} upward tilt across {s}.",
        "The view rises {adv} over {s}.",
    ),
    "tilt_down": (
        "The camera tilts {adv} downward over {s}.",
        "{S}, {adj} tilt down.",
        "A {adj} downward tilt across {s}.",
        "The view drops {adv} over {s}.",
    ),
    "zoom_in": (
        "The camera zooms in {adv} on {s}.",
        "{S}, {adj} zoom in.",
        "A {adj} push in towards {s}.",
        "Zooming in {adv} on {s}.",
    ),
    "zoom_out": (
        "The camera zooms out {adv} from {s}.",
        "{S}, {adj} zoom out.",
        "A {adj} pull back from {s}.",
        "Zooming out {adv} to reveal {s}.",
    ),
}
_ADVERBS = {"slow": ("slowly", "gently", "gradually"), "fast": ("quickly", "rapidly", "swiftly")}
_ADJECTIVES = {"slow": ("slow", "gentle", "gradual"), "fast": ("fast", "quick", "rapid")}


def caption_for(kind: str, speed_class: str, subject: str, rng: np.random.Generator) -> str:
    """A natural-language caption for a move, one paraphrase drawn from rng."""
    template = _TEMPLATES[kind][rng.integers(len(_TEMPLATES[kind]))]
    adv = _ADVERBS[speed_class][rng.integers(3)] if speed_class in _ADVERBS else ""
    adj = _ADJECTIVES[speed_class][rng.integers(3)] if speed_class in _ADJECTIVES else ""
    return template.format(s=subject, S=subject[0].upper() + subject[1:], adv=adv, adj=adj)


# A wider grammar for `paraphrase`: which verb, direction phrase and sentence shape a caption uses
# is drawn anew each time a clip is served, so that a model learns the move from the words that
# name it, not from four fixed sentences. It leaves out every wording of the evaluation suites
# (eval/suites/default_model_*.json: "drifts", "angles", "toward the sky", "closer", "stays",
# "motionless", ...), so their prompts stay unseen.
_SUBJECTS = ("The camera", "The view", "The shot")
_PAN_VERBS = ("pans", "tracks", "trucks", "slides", "glides", "travels", "moves", "sweeps", "swings", "turns", "shifts")
_TILT_VERBS = ("tilts", "cranes", "booms", "moves", "slides", "shifts", "pans", "travels")
_DIR_PHRASES = {
    "left": ("left", "to the left", "leftward", "leftwards"),
    "right": ("right", "to the right", "rightward", "rightwards"),
    "up": ("up", "upward", "upwards"),
    "down": ("down", "downward", "downwards"),
}
_RISE_DROP = {"up": ("rises", "climbs"), "down": ("drops", "sinks", "descends")}
_GERUNDS = {"pan": ("Panning", "Tracking", "Trucking", "Dollying"), "tilt": ("Tilting", "Booming")}
_NOUNS = {"pan": ("pan", "tracking shot", "truck"), "tilt": ("tilt", "crane shot", "boom shot")}
_ZOOM_IN = ("The camera zooms in{adv} on {s}.", "The camera pushes in{adv} on {s}.", "The camera dollies in{adv} on {s}.",
            "Zooming in{adv} on {s}.", "{S}, {adj}zoom in.", "A {adj}zoom into {s}.", "The camera moves forward{adv} into {s}.",
            "A {adj}dolly in on {s}.", "The camera{adv} approaches {s}.",
            # session 12: more shapes, as pans have (a model read zooms only in words close to these)
            "The camera glides in{adv} toward {s}.", "The camera travels forward{adv} toward {s}.",
            "The view zooms{adv} into {s}.", "A {adj}push in on {s}.", "Pushing in{adv} on {s}.",
            "The shot zooms in{adv} toward {s}.", "{S}, the camera dollies forward{adv}.",
            "Dollying forward{adv} toward {s}.", "The camera{adv} moves in on {s}.", "A {adj}zoom-in on {s}.",
            "The camera zooms inward{adv} on {s}.")
_ZOOM_OUT = ("The camera zooms out{adv} from {s}.", "The camera pulls out{adv} from {s}.", "The camera dollies out{adv} from {s}.",
             "Zooming out{adv} from {s}.", "{S}, {adj}zoom out.", "A {adj}pull back from {s}.", "The view widens out{adv} on {s}.",
             "The camera pulls back{adv} to reveal {s}.", "A {adj}dolly out from {s}.",
             "The camera glides back{adv} from {s}.", "The camera travels backward{adv} from {s}.",
             "Pulling out{adv} from {s}.", "Pulling back{adv} from {s}.", "The view zooms{adv} out from {s}.",
             "A {adj}zoom-out from {s}.", "Dollying back{adv} from {s}.", "{S}, the camera dollies backward{adv}.",
             "The shot widens{adv} around {s}.", "The camera zooms out{adv} to take in {s}.")
_STATIC = ("A still shot of {s}.", "{S}, static camera.", "The camera holds steady on {s}.", "A locked-off shot of {s}.",
           "{S}, shot on a tripod.", "A stationary camera looks at {s}.", "{S}, no camera movement.",
           "The camera does not move.", "The camera remains static on {s}.", "A static shot of {s}.")
_MORE_ADVERBS = {"slow": ("slowly", "gently", "gradually", "unhurriedly"), "fast": ("quickly", "rapidly", "swiftly", "briskly")}
_MORE_ADJECTIVES = {"slow": ("slow", "gentle", "gradual", "leisurely"), "fast": ("fast", "quick", "rapid", "brisk")}


# One caption per move in the training captions' own words: what a camera-head model samples with
# in place of a prompt whose move its head has read (`ImageToVideo(camera_prompt=...)`).
CANONICAL_CAPTIONS = {
    "static": "A still shot of the scene.",
    "pan_left": "The camera pans to the left across the scene.",
    "pan_right": "The camera pans to the right across the scene.",
    "tilt_up": "The camera tilts upward over the scene.",
    "tilt_down": "The camera tilts downward over the scene.",
    "zoom_in": "The camera zooms in on the scene.",
    "zoom_out": "The camera zooms out from the scene.",
}


def paraphrase(kind: str, speed_class: str, subject: str, rng: np.random.Generator) -> str:
    """A caption for a move drawn from a wider grammar than `caption_for` (training-time captions).

    Sometimes without its speed word or its subject, sometimes lower case without a full stop,
    as people type prompts.
    """
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    adv = pick(_MORE_ADVERBS[speed_class]) if speed_class in _MORE_ADVERBS and rng.random() < 0.8 else ""
    adj = pick(_MORE_ADJECTIVES[speed_class]) if speed_class in _MORE_ADJECTIVES and rng.random() < 0.8 else ""
    s = subject if rng.random() < 0.7 else "the scene"
    if kind == "static":
        text = pick(_STATIC)
    elif kind.startswith("zoom"):
        text = pick(_ZOOM_IN if kind == "zoom_in" else _ZOOM_OUT)
    else:
        move, direction = kind.split("_")  # pan_left, tilt_up, ...
        dir_phrase = pick(_DIR_PHRASES[direction])
        prep = pick(("across", "over")) if move == "pan" else pick(("over", "along"))
        shape = int(rng.integers(6 if move == "tilt" else 5))
        verb = pick(_PAN_VERBS if move == "pan" else _TILT_VERBS)
        if shape == 0:
            text = f"{pick(_SUBJECTS)} {verb}{{adv}} {dir_phrase} {prep} {{s}}."
        elif shape == 1:
            text = f"{pick(_SUBJECTS)} {verb} {dir_phrase}{{adv}} {prep} {{s}}."
        elif shape == 2:
            text = f"{{S}}, {{adj}}{pick(_NOUNS[move])} {direction}."
        elif shape == 3:
            noun = pick(("pan", "tracking shot")) if move == "pan" else "tilt"
            text = f"A {{adj}}{direction}ward {noun} {prep} {{s}}."
        elif shape == 4:
            text = f"{pick(_GERUNDS[move])} {dir_phrase}{{adv}} {prep} {{s}}."
        else:  # tilts only: the view rises / drops
            text = f"{pick(('The camera', 'The view'))} {pick(_RISE_DROP[direction])}{{adv}} over {{s}}."
    text = text.format(s=s, S=s[0].upper() + s[1:], adv=f" {adv}" if adv else "", adj=f"{adj} " if adj else "")
    if rng.random() < 0.3:
        text = text.rstrip(".").lower()
    return text


def clip_key_name(photo: str) -> str:
    """A photo's name as it can appear in a shard key (no dots): "bikes.mp4@12" -> "bikes-f12"."""
    return photo.replace(".mp4@", "-f").replace(".", "-")


def generate(
    cfg: CameraMotionConfig = CameraMotionConfig(),
    seed: int = 0,
    photos: tuple[Photo, ...] = PHOTOS,
    per_class: int = 1,
    moves: tuple[str, ...] = MOTIONS,
    subject: str = "",
) -> Iterator[CameraClip]:
    """Every photo x every move (of `moves`) x every speed class (static once), `per_class` clips of each.

    Deterministic: the same seed gives the same clips, captions and speeds in the same order.
    `subject`: name every photo with this phrase instead of its own subjects (captions that differ
    only in the move).
    """
    for pi, photo in enumerate(photos):
        yield from photo_clips(cfg, seed, pi, photo, per_class, moves, subject)


def photo_clips(
    cfg: CameraMotionConfig, seed: int, pi: int, photo: Photo, per_class: int = 1,
    moves: tuple[str, ...] = MOTIONS, subject: str = "",
) -> Iterator[CameraClip]:
    """`generate`'s clips of its `pi`-th photo: each photo's clips depend on it alone, so a build
    renders photos in parallel and gets the same clips."""
    image = load_photo(photo.name)
    for kind in MOTIONS:
        if kind not in moves:
            continue
        classes = ("static",) if kind == "static" else tuple(cfg.speeds)
        for speed_class in classes:
            for n in range(per_class):
                # One generator per clip, seeded by its identity: adding photos keeps others fixed.
                rng = np.random.default_rng([seed, pi, MOTIONS.index(kind), classes.index(speed_class), n])
                lo, hi = cfg.speeds.get(speed_class, (0.0, 0.0))
                move = CameraMove(kind, float(rng.uniform(lo, hi)) if kind != "static" else 0.0)
                move = CameraMove(kind, true_speed(move, cfg))
                name = photo.subjects[rng.integers(len(photo.subjects))]
                yield CameraClip(
                    key=f"{clip_key_name(photo.name)}-{kind}-{speed_class}-{n}",
                    frames=render(image, move, cfg, rng),
                    fps=cfg.fps,
                    caption=caption_for(kind, speed_class, subject or name, rng),
                    move=move,
                    speed_class=speed_class,
                    photo=photo.name,
                    subject=subject or name,
                )
