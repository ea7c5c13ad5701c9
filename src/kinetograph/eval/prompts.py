"""Which camera motion a prompt asks for: text -> `MotionClass`, or None when it does not say.

Recognised wordings (case-insensitive; see docs/evaluation.md for the table):
- pans and tilts: a camera-move verb, up to three words, then a direction:
  "pan(s/ning/ned) [to the] left", "tilt up", "trucking right", "tracking shot to the left",
  "dolly left", "crane up", "pedestal down", "boom up"; or the direction first: "a slow
  leftward pan", "upward tilt". Generic verbs (move, slide, glide, drift, travel, turn, swing,
  rotate, shift, sweep) count only with "camera", "view" or "shot" just before them: "the camera
  slowly drifts right", "the view sweeps left". "The camera/view rises" is up, "... drops" down.
  A tilt named by where it ends: "tilts toward the sky/ceiling/clouds/rooftops" is up, "... toward
  the ground/floor/feet/street" down.
- zoom in: "zoom(s/ing) in/into", "push(es) in", "dolly in/forward", "camera moves closer /
  forward / towards ...", "camera approaches".
  Or what it does to the picture: "grows/gets/looms/becomes larger/bigger", "fills more and
  more", "the framing/view tightens/narrows", "tighter and tighter", "we move in on".
- zoom out: "zoom(s/ing) out", "pull(s) back/out/away", "dolly out/back", "camera moves back /
  away / backwards", "widen(s) out". Or what it does to the picture: "grows/gets/becomes
  smaller/tiny", "recedes", "more of the scene comes into view", "the framing/view/scene
  loosens/opens up", "wider and wider", "backs off".
- static: "static", "still camera", "camera is/stays/remains still/static/fixed/stationary",
  "camera holds steady/still",
  "locked-off", "on a tripod", "fixed camera", "stationary camera", "no camera motion/movement",
  "camera does not move".
A match preceded within two words by a negation ("no", "not", "without", "never") is dropped:
"static shot, no zoom" is static. A bare "zoom" is ambiguous and ignored. A prompt matching two
different classes ("pan left then zoom in") returns None: it has no single expected class.
"""

from __future__ import annotations

import re

from kinetograph.eval.motion import MotionClass

# The camera moves of the training data and the camera head (data/camera_motion.py MOTIONS) -> the
# motion class the evaluation measures.
MOVE_CLASS = {"pan_left": "left", "pan_right": "right", "tilt_up": "up", "tilt_down": "down",
              "zoom_in": "zoom_in", "zoom_out": "zoom_out", "static": "static"}

_DIRECTIONS = {
    "left": MotionClass.LEFT,
    "right": MotionClass.RIGHT,
    "up": MotionClass.UP,
    "down": MotionClass.DOWN,
}
# Direction words and their class: "leftward(s)" etc.; "upward(s)" / "downward(s)".
_DIR = r"(?P<dir>left|right|up|down)(?:wards?)?"
_CAMERA_VERB = (
    r"(?:pan|tilt|truck|track|dolly|crane|pedestal|boom)"
    r"(?:s|es|ing|ning|ed|ned|ies|ied)?"
)
_GENERIC_VERB = (
    r"(?:mov|slid|glid|drift|travel|turn|swing|swung|rotat|shift|sweep|swept)"
    r"(?:e|es|ed|ing|s|t|ts|ted|ting|ling|led|els|el)?"
)
_FILLER = r"(?:[\w-]+\W+){0,3}?"  # up to three words between verb and direction
_SUBJECT = r"(?:camera|view|shot)"  # what must come just before a generic verb
_RISE = r"(?:rises?|rising|rose|climbs?|climbing|climbed)"
_DROP = r"(?:drops?|dropping|dropped|sinks?|sinking|sank|descends?|descending|descended)"
# Places a tilt heads for, which name its direction: "tilts toward the ceiling" is up.
_UP_PLACE = r"(?:sky|skies|ceiling|clouds?|treetops|rooftops|stars|heavens|sun)"
_DOWN_PLACE = r"(?:ground|floor|feet|street|pavement|grass|road|earth)"
# The camera verbs that head for a place ("the truck drives toward the road" is no tilt).
_HEADING_VERB = r"(?:pan|tilt|crane|pedestal|boom)(?:s|ing|ning|ed|ned)?"

_ZOOM_IN = [
    r"\bzoom(?:s|ed|ing)?\W+(?:[\w-]+\W+){0,2}?in(?:to|wards?)?\b",
    r"\bpush(?:es|ed|ing)?\W+in\b",
    r"\bdoll(?:y|ies|ied|ying)\W+(?:in|forwards?)\b",
    r"\bcamera\W+(?:[\w-]+\W+){0,2}?(?:moves?|moving|moved|travels?|travell?ing|glides?|gliding)"
    r"\W+(?:[\w-]+\W+){0,1}?(?:closer|forwards?|towards?|in)\b",
    r"\bcamera\W+(?:[\w-]+\W+){0,1}?approach(?:es|ing)?\b",
    # what a zoom in does to the picture: "the dog grows larger", "a tighter and tighter view"
    r"\b(?:grows?|growing|grew|gets?|getting|got|looms?|looming|loomed|becomes?|becoming|became)"
    r"\W+(?:[\w-]+\W+){0,1}?(?:larger|bigger)\b",
    r"\bfills?\W+more\W+and\W+more\b",
    r"\b(?:framing|view|shot)\W+(?:[\w-]+\W+){0,1}?(?:tightens?|tightening|narrows?|narrowing)\b",
    r"\btighter\W+and\W+tighter\b",
    r"\b(?:we|camera)\W+(?:[\w-]+\W+){0,1}?(?:move|moves|go|goes)\W+in\W+(?:\w+ly\W+)?on\b",
]
_ZOOM_OUT = [
    r"\bzoom(?:s|ed|ing)?\W+(?:[\w-]+\W+){0,2}?out\b",
    r"\bpull(?:s|ed|ing)?\W+(?:back|out|away)\b",
    r"\bdoll(?:y|ies|ied|ying)\W+(?:out|back|backwards?)\b",
    r"\bcamera\W+(?:[\w-]+\W+){0,2}?(?:moves?|moving|moved|travels?|travell?ing|glides?|gliding)"
    r"\W+(?:[\w-]+\W+){0,1}?(?:back|backwards?|away)\b",
    r"\bwiden(?:s|ed|ing)?(?:\W+out)?\b",
    # what a zoom out does to the picture: "the dog grows smaller", "more of the scene comes into view"
    r"\b(?:grows?|growing|grew|gets?|getting|got|becomes?|becoming|became)"
    r"\W+(?:[\w-]+\W+){0,1}?(?:smaller|tiny|tinier)\b",
    r"\brecede(?:s|d)?\b|\breceding\b",
    r"\bmore\W+(?:and\W+more\W+)?of\W+the\W+\w+\W+comes?\W+into\W+view\b",
    r"\b(?:framing|view|scene)\W+(?:[\w-]+\W+){0,1}?(?:loosens?|loosening|opens?\W+(?:up|out))\b",
    r"\bwider\W+and\W+wider\b",
    r"\bback(?:s|ed|ing)?\W+off\b",
]
_STATIC = [
    r"\bstatic\b",
    r"\bstill\W+(?:camera|shot|frame)\b",
    r"\bcamera\W+(?:is|stays|remains|kept|held|being)\W+(?:[\w-]+\W+){0,1}?"
    r"(?:still|static|fixed|stationary|locked|steady|motionless)\b",
    r"\blocked[\s-]*off\b",
    r"\bcamera\W+(?:holds?|holding|held)\W+(?:[\w-]+\W+){0,1}?(?:steady|still)\b",
    r"\b(?:on\W+a\W+)?tripod\b",
    r"\b(?:fixed|stationary|motionless|locked)\W+camera\b",
    r"\bno\W+camera\W+(?:motion|movement|moves?)\b",
    r"\bcamera\W+(?:does\W+not|doesn't|doesnt|never)\W+moves?\b",
]
_NEGATION = re.compile(r"\b(?:no|not|without|never|don't|doesn't|isn't)\W+(?:[\w-]+\W+){0,1}$")


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


_DIRECTION_PATTERNS = _compile(
    [
        rf"\b{_CAMERA_VERB}\W+{_FILLER}(?:to\W+the\W+|towards?\W+the\W+)?{_DIR}\b",
        rf"\b{_SUBJECT}\W+(?:[\w-]+\W+){{0,2}}?{_GENERIC_VERB}\W+{_FILLER}"
        rf"(?:to\W+the\W+|towards?\W+the\W+)?{_DIR}\b",
        rf"\b{_DIR}\W+(?:[\w-]+\W+){{0,1}}?{_CAMERA_VERB}\b",
        rf"\b{_SUBJECT}\W+(?:\w+ly\W+)?(?P<dir>{_RISE}|{_DROP})\b",  # at most an adverb between
        rf"\b{_HEADING_VERB}\W+(?:[\w-]+\W+){{0,2}}?towards?\W+the\W+(?P<dir>{_UP_PLACE}|{_DOWN_PLACE})\b",
    ]
)
_ZOOM_IN_PATTERNS = _compile(_ZOOM_IN)
_ZOOM_OUT_PATTERNS = _compile(_ZOOM_OUT)
# Static phrases carry their own negation ("no camera motion"), so they are not negation-checked.
_STATIC_PATTERNS = _compile(_STATIC)


def _direction(word: str) -> MotionClass:
    word = word.lower()
    if re.fullmatch(_RISE, word):
        return MotionClass.UP
    if re.fullmatch(_DROP, word) or re.fullmatch(_DOWN_PLACE, word):
        return MotionClass.DOWN
    if re.fullmatch(_UP_PLACE, word):
        return MotionClass.UP
    return _DIRECTIONS[word]


def _negated(text: str, start: int) -> bool:
    return _NEGATION.search(text[:start]) is not None


def expected_motion(prompt: str) -> MotionClass | None:
    """The camera motion a prompt asks for, or None when it names none or several."""
    text = " ".join(prompt.split())
    found: set[MotionClass] = set()
    for pattern in _DIRECTION_PATTERNS:
        for m in pattern.finditer(text):
            if not _negated(text, m.start()):
                found.add(_direction(m.group("dir")))
    for patterns, cls in (
        (_ZOOM_IN_PATTERNS, MotionClass.ZOOM_IN),
        (_ZOOM_OUT_PATTERNS, MotionClass.ZOOM_OUT),
    ):
        for pattern in patterns:
            if any(not _negated(text, m.start()) for m in pattern.finditer(text)):
                found.add(cls)
    if any(p.search(text) for p in _STATIC_PATTERNS):
        found.add(MotionClass.STATIC)
    return found.pop() if len(found) == 1 else None
