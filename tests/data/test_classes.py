"""The one class mapping (folder classes -> model outputs) and the one --max-images subset."""

import collections

import pytest

from bagnet.data.classes import class_mapping, scoring_note
from bagnet.data.folder import stratified_order, subset_indices


def test_class_mapping_rules(tmp_path):
    data = ["b", "c"]
    # by name, in the model's order
    m = class_mapping(["a", "b", "c"], 3, data)
    assert m.index == (1, 2) and not m.identity and m.how == "by class name"
    assert class_mapping(["b", "c"], 2, data).as_list() is None  # identical
    # no class names, one output per class: folder order, flagged
    m = class_mapping(None, 2, data)
    assert m.identity and "no class names" in m.how
    # an ImageNet-1k model on WordNet-id folders: through the data set's classes.tsv, found one level up
    root = tmp_path / "ds"
    (root / "val").mkdir(parents=True)
    (root / "classes.tsv").write_text("wnid\timagenet_index\tname\nb\t7\tbee\nc\t900\tcat\n")
    names = [f"class {i}" for i in range(1000)]
    m = class_mapping(names, 1000, data, data_root=root / "val")
    assert m.index == (7, 900) and "classes.tsv" in m.how
    assert class_mapping(None, 1000, data, class_map="imagenet", data_root=root / "val").index == (7, 900)
    assert class_mapping(None, 1000, data, class_map=root / "classes.tsv").index == (7, 900)


def test_class_mapping_refusals(tmp_path):
    data = ["b", "c"]
    with pytest.raises(ValueError, match="no class names"):
        class_mapping(None, 1000, data)
    with pytest.raises(ValueError, match="do not include the folder's b, c"):
        class_mapping(["x", "y"], 2, data)
    with pytest.raises(FileNotFoundError, match="needs a classes.tsv"):
        class_mapping(None, 1000, data, class_map="imagenet", data_root=tmp_path)
    tsv = tmp_path / "m.tsv"
    tsv.write_text("b\t1\nc\t9\n")
    with pytest.raises(ValueError, match="maps to output 9, but the model has 5 outputs"):
        class_mapping(None, 5, data, class_map=tsv)
    tsv.write_text("b\t1\nc\t1\n")
    with pytest.raises(ValueError, match="to the same output"):
        class_mapping(None, 5, data, class_map=tsv)
    tsv.write_text("b\t1\n")
    with pytest.raises(ValueError, match="no entry for class folder"):
        class_mapping(None, 5, data, class_map=tsv)


def test_scoring_note_says_which_outputs():
    assert "one per folder class" in scoring_note(10, 10, False)
    assert "all 1000 outputs" in scoring_note(1000, 10, False)
    assert scoring_note(1000, 10, True).startswith("RESTRICTED")


def test_subset_is_stratified_seeded_and_nested():
    targets = [0] * 50 + [1] * 30 + [2] * 20
    for n in (3, 10, 17, 60):
        counts = collections.Counter(targets[i] for i in subset_indices(targets, n, seed=1))
        # each class within one image of its share (hand-computed shares: 50/30/20 of n)
        for c, share in ((0, 0.5), (1, 0.3), (2, 0.2)):
            assert abs(counts[c] - share * n) <= 1, (n, counts)
        assert sum(counts.values()) == n
    assert subset_indices(targets, 10, 1) == subset_indices(targets, 10, 1)  # seeded
    assert subset_indices(targets, 10, 1) != subset_indices(targets, 10, 2)
    assert set(subset_indices(targets, 10, 1)) <= set(subset_indices(targets, 25, 1))  # nested
    assert subset_indices(targets, None) == list(range(100))
    assert sorted(stratified_order(targets, 3)) == list(range(100))  # a permutation
    with pytest.raises(ValueError, match="at least 1"):
        subset_indices(targets, 0)
