"""The demo's sample photos say what they show, so a wrong prediction is never left unmarked."""

import numpy as np
import pytest

from bagnet.app._drawn import golf_ball
from bagnet.app.samples import SAMPLE_NAMES, SAMPLE_SUBJECTS, sample_image, sample_note, sample_subject
from bagnet.data.imagenet import imagenet_classes

IMAGENETTE = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
              "garbage truck", "gas pump", "golf ball", "parachute"]


def test_every_sample_has_a_subject_whose_labels_are_imagenet_class_names():
    assert set(SAMPLE_SUBJECTS) == set(SAMPLE_NAMES)
    names = set(imagenet_classes())
    for name in SAMPLE_NAMES:
        subject = sample_subject(name)
        assert subject.description
        assert set(subject.labels) <= names, name


@pytest.mark.parametrize("name", [n for n in SAMPLE_NAMES if n != "golf_ball"])
def test_no_photo_is_an_imagenette_class(name):
    assert sample_note(name, IMAGENETTE).endswith("none of the 10 classes this model knows")


def test_the_drawn_golf_ball_is_one_class_of_imagenette_and_of_imagenet():
    assert sample_note("golf_ball", IMAGENETTE) == ("sample drawing: a golf ball on grass, drawn by bagnet; right answers "
                                                    "among this model's classes: golf ball")
    assert sample_note("golf_ball", list(imagenet_classes())).endswith("right answers among this model's classes: golf ball")


def test_the_drawn_golf_ball_is_a_white_ball_on_green_grass():
    image = np.asarray(sample_image("golf_ball"), float)
    assert image.shape == (320, 320, 3)
    assert np.array_equal(image, np.asarray(golf_ball(320), float))  # drawn the same every time
    sample_image("golf_ball").paste((0, 0, 0), (0, 0, 320, 320))  # a caller's change stays its own
    assert np.array_equal(image, np.asarray(sample_image("golf_ball"), float))
    # Centre: white-grey (r, g, b close and bright); corners: green dominates.
    centre = image[130:170, 130:170].reshape(-1, 3).mean(0)
    assert centre.min() > 150 and centre.max() - centre.min() < 25
    for corner in (image[:40, :40], image[-40:, -40:], image[:40, -40:]):
        r, g, b = corner.reshape(-1, 3).mean(0)
        assert g > 1.5 * r and g > 1.5 * b
    # The dimples make the ball's surface textured, not a smooth gradient.
    ball = image[120:180, 120:180].mean(2)
    assert np.abs(np.diff(ball, axis=1)).mean() > 2
    with pytest.raises(ValueError, match="size must be at least 32"):
        golf_ball(16)


def test_a_model_that_knows_the_subject_gets_the_right_answers_named():
    note = sample_note("chelsea", list(imagenet_classes()))
    assert "none of" not in note
    assert "tabby" in note and "tiger cat" in note and "Egyptian cat" in note
    assert sample_note("astronaut", list(imagenet_classes())).endswith("none of the 1000 classes this model knows")


def test_unknown_sample_names_are_refused():
    with pytest.raises(ValueError, match="unknown sample image 'dog'"):
        sample_subject("dog")
