"""Sample images for the demo and the explorer, so both run offline out of the box.

Six photos that ship with scikit-image, none of them an Imagenette class, and one picture
drawn here (:func:`bagnet.app._drawn.golf_ball`) that is one: the shipped 10-class model
can only be right about a sample if one shows a thing it knows, and a drawing needs no
dataset image inside the package.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .._extras import require
from ..data.images import to_rgb

__all__ = ["SAMPLE_NAMES", "SAMPLE_SUBJECTS", "SampleSubject", "sample_image", "sample_note", "sample_subject"]

# A drawn golf ball (an Imagenette and ImageNet class) first, then colour photos of everyday
# objects (plus one grayscale classic): files inside the scikit-image wheel, none of which
# needs pooch or the network.
SAMPLE_NAMES = ("golf_ball", "chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera")


@dataclass(frozen=True)
class SampleSubject:
    """What a sample photo shows, and the ImageNet class names that would be right for it.

    Attributes:
        description: a few words for people ("a tabby cat").
        labels: ImageNet class names (as in ``bagnet.data.imagenet.imagenet_classes()``)
            that count as a correct prediction; empty when ImageNet has none.
        kind: ``"photo"``, or ``"drawing"`` for a picture bagnet draws itself.
        credit: where the image comes from, as the explorer says it.
    """

    description: str
    labels: tuple[str, ...]
    kind: str = "photo"
    credit: str = "from scikit-image"


# Every sample says what it shows, so the demo can tell next to the prediction whether the
# model's classes can name it instead of relying on the model's (weak) unknown-photo flag
# alone. Only the golf ball is an Imagenette class.
SAMPLE_SUBJECTS: dict[str, SampleSubject] = {
    "golf_ball": SampleSubject("a golf ball on grass, drawn by bagnet", ("golf ball",), "drawing", "drawn by bagnet"),
    "chelsea": SampleSubject("a cat", ("tabby", "tiger cat", "Egyptian cat")),
    "coffee": SampleSubject("a cup of coffee", ("espresso", "cup", "coffee mug")),
    "astronaut": SampleSubject("an astronaut in an orange suit", ()),
    "rocket": SampleSubject("a rocket on its launch pad", ("missile", "projectile", "space shuttle")),
    "motorcycle": SampleSubject("a motorcycle", ("moped", "motor scooter")),
    "camera": SampleSubject("a man with a camera on a tripod", ("reflex camera", "tripod")),
}


def sample_image(name: str) -> Image.Image:
    """One of :data:`SAMPLE_NAMES` as an 8-bit RGB PIL image.

    Raises:
        ValueError: unknown name.
    """
    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample image {name!r}; choose one of {', '.join(SAMPLE_NAMES)}")
    if name == "golf_ball":
        return _golf_ball().copy()  # drawn once (about 0.2 s); a copy, so callers may change it
    data = require("skimage.data", "the demo's sample photos")  # imported here: scikit-image is slow to import

    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


@functools.cache
def _golf_ball() -> Image.Image:
    from ._drawn import golf_ball

    return golf_ball(320)


def sample_subject(name: str) -> SampleSubject:
    """What sample ``name`` shows.

    Raises:
        ValueError: unknown name.
    """
    if name not in SAMPLE_SUBJECTS:
        raise ValueError(f"unknown sample image {name!r}; choose one of {', '.join(SAMPLE_NAMES)}")
    return SAMPLE_SUBJECTS[name]


def sample_note(name: str, class_names: Sequence[str]) -> str:
    """One sentence telling whether a model with ``class_names`` can name sample ``name``.

    A sample whose subject matches none of the classes gets "... is none of the N classes
    this model knows", whatever the model predicts; one that matches lists the classes that
    would be right.
    """
    subject = sample_subject(name)
    known = {c.casefold(): c for c in class_names}
    right = [known[label.casefold()] for label in subject.labels if label.casefold() in known]
    n = len(class_names)
    if not right:
        return f"sample {subject.kind}: {subject.description}, none of the {n} classes this model knows"
    return f"sample {subject.kind}: {subject.description}; right answers among this model's classes: {', '.join(right)}"
