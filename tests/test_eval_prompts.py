"""Prompt -> expected camera-motion class: common wordings, paraphrases, negations, conflicts."""

from __future__ import annotations

import numpy as np
import pytest

from kinetograph.data import camera_motion
from kinetograph.eval.motion import MotionClass
from kinetograph.eval.prompts import expected_motion

MOVE_CLASS = {"static": MotionClass.STATIC, "pan_left": MotionClass.LEFT, "pan_right": MotionClass.RIGHT,
              "tilt_up": MotionClass.UP, "tilt_down": MotionClass.DOWN, "zoom_in": MotionClass.ZOOM_IN,
              "zoom_out": MotionClass.ZOOM_OUT}
L, R, U, D = MotionClass.LEFT, MotionClass.RIGHT, MotionClass.UP, MotionClass.DOWN
ZI, ZO, S = MotionClass.ZOOM_IN, MotionClass.ZOOM_OUT, MotionClass.STATIC

CASES = [
    # pans and tilts, verb first
    ("the camera pans left", L),
    ("Camera panning to the left over a city", L),
    ("slow pan right across the beach", R),
    ("pans slowly to the right", R),
    ("camera pans up", U),
    ("camera tilts up to the sky", U),
    ("tilt down to the floor", D),
    ("tracking shot to the left", L),
    ("trucking right past the cars", R),
    ("crane up over the crowd", U),
    ("pedestal down", D),
    ("dolly left", L),
    # direction first
    ("a leftward pan over the mountains", L),
    ("upward tilt revealing the tower", U),
    # generic verbs need the camera as subject
    ("the camera slowly drifts right", R),
    ("the camera moves to the left", L),
    ("camera is moving upwards", U),
    ("the camera turns right", R),
    ("the view sweeps gently left over the city", L),
    ("the view rises slowly over the forest", U),
    ("the camera drops down the cliff", D),
    ("a view of birds rising", None),
    ("a dog runs to the left", None),
    ("turn right at the corner", None),
    ("a woman looks up", None),
    ("birds flying up", None),
    ("she picks up the phone", None),
    # zoom in
    ("zoom in on the cat", ZI),
    ("zooming into the face", ZI),
    ("the camera zooms in slowly", ZI),
    ("slow zoom in", ZI),
    ("push in on the actor", ZI),
    ("dolly in", ZI),
    ("the camera moves closer to the door", ZI),
    ("camera slowly approaches the house", ZI),
    # tilts named by where they end
    ("the camera tilts slowly toward the ceiling", U),
    ("tilting toward the sky", U),
    ("a crane shot towards the rooftops", U),
    ("the camera tilts down toward the floor", D),
    ("a shot tilting toward the ground", D),
    ("the dog walks toward the street", None),
    ("a truck drives toward the road", None),
    # zoom in, said by what it does to the picture
    ("the lighthouse grows larger in view", ZI),
    ("the cat gets bigger and bigger", ZI),
    ("the mountain looms larger", ZI),
    ("the framing tightens on her face", ZI),
    ("a tighter and tighter view of the flower", ZI),
    ("we move in slowly on the house", ZI),
    ("the dog fills more and more of the screen", ZI),
    ("a bigger dog", None),  # a size, not a change
    # zoom out, said by what it does to the picture
    ("the boat grows smaller in view", ZO),
    ("the house becomes tiny in the scene", ZO),
    ("the village recedes into the distance", ZO),
    ("more of the scene comes into view", ZO),
    ("the view opens up around the tower", ZO),
    ("a wider and wider view of the bay", ZO),
    ("we back off from the statue", ZO),
    ("a smaller boat next to a ship", None),
    ("the tower grows larger, then the camera pans left", None),  # two moves: no single class
    # zoom out
    ("zoom out to reveal the city", ZO),
    ("zooms out slowly", ZO),
    ("pull back from the subject", ZO),
    ("camera pulls away", ZO),
    ("the camera moves back", ZO),
    ("dolly out", ZO),
    ("widen out", ZO),
    # static
    ("static shot of a lake", S),
    ("still camera, leaves rustle", S),
    ("the camera is still", S),
    ("the camera remains completely still", S),
    ("locked-off shot", S),
    ("filmed on a tripod", S),
    ("no camera movement", S),
    ("the camera does not move", S),
    ("fixed camera", S),
    ("a static shot, the camera does not move", S),
    # negation, ambiguity, conflicts
    ("static camera, no zoom", S),
    ("without panning left", None),
    ("the camera is static while a man walks to the right", S),
    ("a slow zoom", None),
    ("panning shot", None),
    ("a pan of soup", None),
    ("a cat on a sofa", None),
    ("pan left then zoom in", None),
    ("the camera pans left and zooms in", None),
    ("", None),
]


@pytest.mark.parametrize(("prompt", "expected"), CASES)
def test_expected_motion(prompt, expected):
    assert expected_motion(prompt) == expected


def test_case_and_whitespace_insensitive():
    assert expected_motion("THE   CAMERA\nPANS\tLEFT") == L


def test_every_training_caption_names_its_move():
    """The captions our camera clips are trained on parse to the move rendered (every template,
    every speed word), so evaluating with training wordings measures what the data taught."""
    rng = np.random.default_rng(0)
    for kind in camera_motion.MOTIONS:
        classes = ("static",) if kind == "static" else ("slow", "fast")
        for speed in classes:
            captions = {camera_motion.caption_for(kind, speed, "the scene", rng) for _ in range(200)}
            assert len(captions) >= 4
            for caption in captions:
                assert expected_motion(caption) == MOVE_CLASS[kind], caption
