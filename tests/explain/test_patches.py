"""top_patches against a brute-force search over every map entry."""

import numpy as np
import pytest
import torch

from bagnet.explain import MapGeometry, top_patches


def brute_boxes(geom):
    """Every entry's clipped box, from the definition: the patch centred on (s*i, s*j)
    (padded) or with top-left corner (s*i, s*j) (unpadded)."""
    h, w = geom.map_size
    H, W = geom.image_size
    out = {}
    for i in range(h):
        for j in range(w):
            y0, x0 = geom.stride * i - geom.offset, geom.stride * j - geom.offset
            y1, x1 = y0 + geom.patch_size, x0 + geom.patch_size
            out[i, j] = (max(x0, 0), max(y0, 0), min(x1, W), min(y1, H))
    return out


def overlap(a, b):
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter, inter / (area_a + area_b - inter)


def brute_top(ev, geom, k, non_overlapping=False, max_overlap=0.0, largest=True, inside=False):
    boxes = brute_boxes(geom)
    entries = sorted(boxes, key=lambda ij: (-ev[ij] if largest else ev[ij], ij))  # ties: row-major
    if inside:  # a clipped box is a window that reaches past the image
        q = geom.patch_size
        entries = [ij for ij in entries if boxes[ij][2] - boxes[ij][0] == q and boxes[ij][3] - boxes[ij][1] == q]
    chosen = []
    for ij in entries:
        if len(chosen) == k:
            break
        if non_overlapping:
            clash = False
            for c in chosen:
                inter, iou = overlap(boxes[ij], boxes[c])
                if (inter > 0) if max_overlap == 0 else (iou > max_overlap):
                    clash = True
            if clash:
                continue
        chosen.append(ij)
    return [(boxes[ij], float(ev[ij])) for ij in chosen]


GEOMETRIES = [
    MapGeometry(9, 1, 4, (20, 17)),  # padded, full resolution
    MapGeometry(9, 1, 0, (20, 17)),  # unpadded
    MapGeometry(33, 8, 16, (61, 50)),  # padded, native stride
    MapGeometry(17, 3, 8, (25, 31)),  # padded, odd stride
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"q{g.patch_size}s{g.stride}o{g.offset}")
@pytest.mark.parametrize("non_overlapping,max_overlap", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_matches_brute_force(geom, non_overlapping, max_overlap):
    rng = np.random.default_rng(0)
    ev = rng.normal(size=(3, *geom.map_size)).astype(np.float32)
    got = top_patches(torch.from_numpy(ev), geom, k=6, classes=[4, 0, 2], non_overlapping=non_overlapping,
                      max_overlap=max_overlap)
    assert len(got) == 3
    for c, patches, m in zip([4, 0, 2], got, ev):
        want = brute_top(m, geom, 6, non_overlapping, max_overlap)
        assert [(p.box, p.score) for p in patches] == [(b, pytest.approx(s)) for b, s in want]
        assert all(p.class_index == c for p in patches)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"q{g.patch_size}s{g.stride}o{g.offset}")
@pytest.mark.parametrize("non_overlapping", [False, True])
def test_inside_keeps_only_whole_windows(geom, non_overlapping):
    rng = np.random.default_rng(1)
    ev = rng.normal(size=geom.map_size).astype(np.float32)
    got = top_patches(ev, geom, k=8, non_overlapping=non_overlapping, inside=True)
    want = brute_top(ev, geom, 8, non_overlapping, inside=True)
    assert [(p.box, p.score) for p in got] == [(b, pytest.approx(s)) for b, s in want]
    q = geom.patch_size
    assert got and all(p.box[2] - p.box[0] == q and p.box[3] - p.box[1] == q for p in got)


def test_inside_on_a_map_without_whole_windows_is_empty():
    geom = MapGeometry(9, 8, 4, (12, 12))  # windows start at -4, 4: none fits in 12 px
    assert top_patches(np.ones(geom.map_size, np.float32), geom, k=3, inside=True) == []


def test_ties_smallest_and_centres():
    geom = MapGeometry(5, 1, 2, (6, 7))
    ev = np.zeros((6, 7), np.float32)
    ev[4, 5] = ev[1, 2] = 3.0  # a tie: row-major order decides
    ev[0, 0] = -2.0
    best = top_patches(ev, geom, k=2)
    assert [p.center for p in best] == [(2, 1), (5, 4)]  # (x, y), as the boxes
    assert best[0].box == (0, 0, 5, 4)  # centred at (x=2, y=1), clipped at the top
    worst = top_patches(ev, geom, k=1, largest=False)[0]
    assert worst.center == (0, 0) and worst.box == (0, 0, 3, 3) and worst.score == -2.0


def test_non_overlapping_runs_out_and_boxes_are_disjoint():
    geom = MapGeometry(9, 1, 4, (12, 12))
    ev = np.arange(144, dtype=np.float32).reshape(12, 12)
    patches = top_patches(ev, geom, k=50, non_overlapping=True)
    assert 1 < len(patches) < 50
    for i, a in enumerate(patches):
        for b in patches[i + 1 :]:
            assert overlap(a.box, b.box)[0] == 0
    assert patches[0].score == 143.0


def test_to_dict_is_plain():
    p = top_patches(np.ones((4, 4), np.float32), MapGeometry(3, 1, 1, (4, 4)), k=1)[0]
    assert p.to_dict() == {"box": [0, 0, 2, 2], "score": 1.0, "class_index": 0, "center": [0, 0]}


def test_errors():
    geom = MapGeometry(9, 1, 4, (10, 10))
    with pytest.raises(ValueError, match="geometry"):
        top_patches(np.zeros((9, 10)), geom)
    with pytest.raises(ValueError, match="k must"):
        top_patches(np.zeros((10, 10)), geom, k=0)
    with pytest.raises(ValueError, match="shape"):
        top_patches(np.zeros((1, 1, 10, 10)), geom)
    with pytest.raises(ValueError, match="class indices"):
        top_patches(np.zeros((2, 10, 10)), geom, classes=[1])
    with pytest.raises(ValueError, match="max_overlap"):
        top_patches(np.zeros((10, 10)), geom, non_overlapping=True, max_overlap=1.0)
