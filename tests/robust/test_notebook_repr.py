"""Certificates and robustness summaries render inline in Jupyter, with the numbers they hold."""

import re

import torch

from bagnet.robust import Certificate, RobustnessSummary


def test_certificate_html_lists_each_image_and_counts_the_certified():
    cert = Certificate(
        prediction=torch.tensor([3, 1, 4]),
        certified=torch.tensor([True, False, True]),
        margin=torch.tensor([0.25, -1.5, 0.125], dtype=torch.float64),
        patch_size=16, window=(4, 4), defense="mask",
        removed=torch.tensor([[0, 1], [2, 3], [5, 6]]),
    )
    html = cert._repr_html_()
    assert "2 of 3 images certified" in html and "16x16 px" in html and "window 4x4" in html
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td[^>]*>(yes|no)</td><td>([^<]+)</td><td>([^<]*)</td></tr>", html)
    assert rows == [("0", "3", "yes", "0.25", "(0, 1)"), ("1", "1", "no", "-1.5", "(2, 3)"),
                    ("2", "4", "yes", "0.125", "(5, 6)")]
    assert "more" not in html
    long = Certificate(torch.zeros(25, dtype=torch.long), torch.zeros(25, dtype=torch.bool),
                       torch.zeros(25, dtype=torch.float64), 8, (2, 2), "clip")
    assert "... 5 more" in long._repr_html_()


def test_summary_html_shows_the_accuracies_and_a_broken_certificate():
    ok = RobustnessSummary("mask", "2%", 16, 30, clean=73.333, certified=30.0, attacked=None)
    html = ok._repr_html_()
    assert "<td>73.33%</td><td>30.00%</td><td>-</td>" in html and "16 px" in html
    assert "flipped" not in html
    broken = RobustnessSummary("clip", "3%", 20, 30, clean=70.0, certified=20.0, attacked=40.0, certified_but_flipped=2)
    assert "2 certified images flipped" in broken._repr_html_()
