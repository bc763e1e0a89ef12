"""The demo's sample photos say what they show, so a wrong prediction is never left unmarked."""

import pytest

from bagnet.app.samples import SAMPLE_NAMES, SAMPLE_SUBJECTS, sample_note, sample_subject
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


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_no_sample_is_an_imagenette_class(name):
    assert sample_note(name, IMAGENETTE).endswith("none of the 10 classes this model knows")


def test_a_model_that_knows_the_subject_gets_the_right_answers_named():
    note = sample_note("chelsea", list(imagenet_classes()))
    assert "none of" not in note
    assert "tabby" in note and "tiger cat" in note and "Egyptian cat" in note
    assert sample_note("astronaut", list(imagenet_classes())).endswith("none of the 1000 classes this model knows")


def test_unknown_sample_names_are_refused():
    with pytest.raises(ValueError, match="unknown sample image 'dog'"):
        sample_subject("dog")
