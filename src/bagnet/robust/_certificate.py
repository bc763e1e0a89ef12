"""The certificate of a batch of images, whichever defence made it.

:class:`Certificate` is what :meth:`~bagnet.robust.RobustBagNet.certify` (PatchGuard's
masking, Clipped BagNet) and :meth:`~bagnet.robust.PatchCleanser.certify` return; both
compute the evidence under :func:`_eval_mode`, since certificates hold for the model in
eval mode only.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Certificate"]


@dataclass
class Certificate:
    """Certificates of a batch of images against one patch size.

    Attributes:
        prediction: ``[N]`` the defended prediction (the argmax of the float64 defended
            logits, those of :meth:`RobustBagNet.forward`).
        certified: ``[N]`` bool, no p x p patch anywhere can change ``prediction``.
        margin: ``[N]`` float64, the smallest worst-case gap (in logit units: evidence per
            location) between the predicted class and any other; certified iff > 0.
            ``-inf`` for the undefended model, which no bound holds.
        patch_size: side p in pixels.
        window: ``(rows, cols)`` of the evidence window a patch can affect; for
            ``"cleanser"`` the size of its masks in pixels.
        defense: ``"mask"``, ``"clip"``, ``"none"`` or ``"cleanser"``.
        removed: ``[N, 2]`` for ``"mask"``: the grid ``(row, col)`` of the top-left corner of
            the window the masking removed for the predicted class; ``None`` otherwise.
        squashing: for ``"clip"``, the squashing (``"tanh(1 * x - 2)"``, ``"clamp to [0, 3]"``).
        squashing_source: for ``"clip"``, why that squashing (see :func:`clip_squashing`).
        masks: for ``"cleanser"``, the number of masks of its mask set.
        passes: for ``"cleanser"``, the masked images the model classified per image.

    For ``"cleanser"`` (PatchCleanser, :meth:`~bagnet.robust.PatchCleanser.certify`),
    ``certified`` is the vote of every pair of masks and ``margin`` the smallest logit gap
    of the prediction over those masked images (at least 0 when certified, 0 only at an
    exact tie; at most 0 otherwise).
    """

    prediction: torch.Tensor
    certified: torch.Tensor
    margin: torch.Tensor
    patch_size: int
    window: tuple[int, int]
    defense: str
    removed: torch.Tensor | None = None
    squashing: str | None = None
    squashing_source: str | None = None
    masks: int | None = None
    passes: int | None = None

    def correct(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool, the defended prediction is the label."""
        return self.prediction.cpu() == torch.as_tensor(labels).cpu()

    def certified_correct(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool, certified and correct: what certified accuracy counts."""
        return self.correct(labels) & self.certified.cpu()

    def removed_box(self, i: int, receptive_field: int, patch_stride: int,
                    image_size: tuple[int, int]) -> list[int] | None:
        """The pixels the masking removed from image ``i``: ``[x0, y0, x1, y1]`` (x before y,
        x1 and y1 excluded) in the ``(height, width)`` = ``image_size`` input, the union of the
        ``receptive_field`` squares of the removed window's locations; ``None`` unless ``"mask"``."""
        if self.removed is None:
            return None
        q, s = receptive_field, patch_stride
        (r, c), (wh, ww) = self.removed[i].tolist(), self.window
        h, w = image_size
        return [s * c, s * r, min(w, s * (c + ww - 1) + q), min(h, s * (r + wh - 1) + q)]

    def _repr_html_(self, max_rows: int = 20) -> str:
        """A table of the certificates, shown inline by Jupyter (the first ``max_rows`` images)."""
        n = len(self.prediction)
        certified = int(self.certified.sum())
        squashing = f", squashing {html.escape(self.squashing)}" if self.squashing else ""
        window = (f"{self.masks} masks of {self.window[0]}x{self.window[1]} px" if self.defense == "cleanser" else
                  f"window {self.window[0]}x{self.window[1]}")
        head = (f"{html.escape(self.defense)} defence{squashing} against {self.patch_size}x{self.patch_size} px patches "
                f"({window}): {certified} of {n} images certified")
        rows = []
        for i in range(min(n, max_rows)):
            ok = bool(self.certified[i])
            removed = "" if self.removed is None else str(tuple(int(v) for v in self.removed[i]))
            rows.append(f"<tr><td>{i}</td><td>{int(self.prediction[i])}</td>"
                        f"<td style='color:{'#006400' if ok else '#b00000'}'>{'yes' if ok else 'no'}</td>"
                        f"<td>{float(self.margin[i]):.4g}</td><td>{removed}</td></tr>")
        more = f"<p>... {n - max_rows} more</p>" if n > max_rows else ""
        return (f"<div class='bagnet-certificate'><p><b>{head}</b></p><table><tr><th>image</th>"
                "<th>prediction</th><th>certified</th><th>margin</th><th>removed window</th></tr>"
                f"{''.join(rows)}</table>{more}</div>")


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule of ``module`` in eval mode inside, its own ``training`` flag after
    (``train(was_training)`` would push one mode onto all of them)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
