"""What the page and the downloads show of an explored image: the photo, heatmap overlays,
the per-class view, the summary, figures and JSON (a mixin of
:class:`bagnet.app.explorer.ExploredImage`, which holds the state these methods read)."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..explain._explain import figure_bytes
from ._figure import explorer_figure, short_name
from ._images import _jpeg, colorize, png_data_url

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__: list[str] = []

# Models with at most this many classes get the full-resolution maps of all classes from
# one pass (the classifier is the cheap last step) and keep them with the image. Larger
# ones (ImageNet) keep what all classes share instead, the features before the classifier
# (in the explorer's bounded FeatureCache), and make each class's map from them on demand.
_FULL_ALL_CLASSES = 32


class _Views:
    """What the page and the downloads show of an explored image."""

    # -- what the page and the downloads show -----------------------------------------

    @property
    def photo(self) -> Image.Image:
        """The photo shown under the maps: the analysed part of the original image, sharp,
        at up to :data:`PHOTO_SIDE` pixels (:attr:`image`, the model's input, for images
        given as tensors or arrays)."""
        return Image.open(io.BytesIO(self._photo)) if self._photo is not None else self.image

    def upsampled(self, cls: int, res: str = "native") -> np.ndarray:
        """The map of ``cls`` with one value per pixel of the model's input (native maps:
        every pixel takes the value of the nearest patch centre)."""
        m = self.evidence(cls, res).numpy()
        h, w = self.display.shape[-2:]
        if res == "native":
            # Native entry (i, j) is centred on pixel (s*i, s*j).
            s = self.explorer.patch_stride
            rows = np.clip((np.arange(h) + s // 2) // s, 0, m.shape[0] - 1)
            cols = np.clip((np.arange(w) + s // 2) // s, 0, m.shape[1] - 1)
            m = m[rows[:, None], cols[None, :]]
        return m

    def heatmap_rgba(self, cls: int, res: str = "native", vmax: float | None = None) -> tuple[np.ndarray, float]:
        """The map as a translucent RGBA overlay of the model input's size, and its colour
        scale (this image's :attr:`scale` unless ``vmax`` is given)."""
        return colorize(self.upsampled(cls, res), vmax=self.scale if vmax is None else vmax)

    def view(self, cls: int, res: str = "native", vmax: float | None = None) -> dict:
        """What the page shows for one class: overlay PNG (data URL), top patches, colour
        scale (``+-vmax``; default: this image's :attr:`scale`), what the map averages, and
        whether the map was ``cached`` (computed before, e.g. native maps with the upload)."""
        cached = cls in self._maps[res]  # else computed by this call (the page says which)
        rgba, scale = self.heatmap_rgba(cls, res, vmax)
        m = self.evidence(cls, res)
        return {
            "cached": cached,
            "class": cls,
            "name": self.class_name(cls),
            "res": res,
            "heatmap": png_data_url(Image.fromarray(rgba, "RGBA")),
            "patches": [p.to_dict() for p in self.patches(cls, res)],
            "vmax": scale,
            "scale": "image" if vmax is None else "fixed",
            "map_mean": float(m.mean()),
            "beyond_scale": float((m.abs() > scale).float().mean()),
            **{k: v for k, v in self.prediction(cls).to_dict().items() if k in ("probability", "logit")},
        }

    def summary(self, n: int = 10) -> dict:
        """What the page needs right after an upload."""
        h, w = self.display.shape[-2:]
        photo = self._photo or _jpeg(self.image)
        return {
            "name": self.name,
            "width": w,
            "height": h,
            "image": "data:image/jpeg;base64," + base64.b64encode(photo).decode("ascii"),
            "predictions": self.predictions(n),
            "top_class": self.top_class,
            "original_size": self.source["size"],
            "note": self.crop_note(),
            "unknown": None if self.unknown is None else self.unknown.to_dict(),
            "scale": self.scale,
        }

    def crop_note(self) -> str | None:
        """A sentence saying which part of the image was analysed, if not all of it."""
        (w, h), (x0, y0, x1, y1) = self.source["size"], self.source["box"]
        if (x1 - x0, y1 - y0) == (w, h):
            return None
        return (f"only the centre {x1 - x0}x{y1 - y0} pixels of this {w}x{h} image were analysed "
                "(the long side is limited to twice the short side)")

    def figure(self, cls: int, res: str = "native", vmax: float | None = None, *, certify: str | None = None,
               defense: str = "mask") -> Figure:
        """The page's view of one class as a figure: the photo with the evidence, the top
        patches numbered, and a colour bar with the scale (this image's unless ``vmax``).
        With ``certify`` (a patch size, as for :meth:`certificate`), the certificate's line
        under the title and, for ``"mask"``, the removed window as a dashed box.

        Raises:
            ValueError: a bad patch size or defence.
        """
        cert = None if certify is None else self.certificate(certify, defense)
        pred = self.prediction(cls)
        title = f"{short_name(self.name)}: evidence for {pred.name} (p = {pred.probability:.3f}, logit {pred.logit:.2f})"
        if self.unknown is not None and self.unknown.flag:
            title += f"\n{self.unknown.message}"
        return explorer_figure(np.asarray(self.photo), self.upsampled(cls, res), self.patches(cls, res),
                               self.scale if vmax is None else vmax, res=res, class_name=pred.name, title=title,
                               certificate=cert)

    def figure_png(self, cls: int, res: str = "native", vmax: float | None = None, dpi: int = 200, *,
                   certify: str | None = None, defense: str = "mask") -> bytes:
        """:meth:`figure` as PNG at ``dpi`` dots per inch."""
        return figure_bytes(self.figure(cls, res, vmax, certify=certify, defense=defense), "png", dpi, png_level=1)

    def figure_svg(self, cls: int, res: str = "native", vmax: float | None = None, *, certify: str | None = None,
                   defense: str = "mask") -> bytes:
        """:meth:`figure` as SVG (the photo and the map embedded as images)."""
        return figure_bytes(self.figure(cls, res, vmax, certify=certify, defense=defense), "svg")

    def to_dict(self, res: str = "native", n: int = 10, *, maps: bool = False, certify: str | None = None,
                defense: str = "mask") -> dict:
        """:meth:`Explanation.to_dict` of the top classes, with the "none of these" check.

        With ``maps``, ``maps`` holds per explained class index the ``[h, w]`` evidence map
        (rounded to 1e-4) of this resolution; full-resolution maps of models with many
        classes are given for the ``top_k`` classes only. With ``certify`` (a patch size),
        ``certified`` holds :meth:`certificate` of it and ``defense``.
        """
        cert = None if certify is None else self.certificate(certify, defense)
        many = res == "full" and self.num_classes > _FULL_ALL_CLASSES
        classes = self.ranking(self.explorer.top_k if many else n)
        out = {"image": self.name, "resolution": res, "scale": self.scale,
               **self.explanation(classes, res, n=n).to_dict()}
        if maps:
            out["maps"] = {str(c): np.round(self.evidence(c, res).numpy(), 4).tolist() for c in classes}
        if cert is not None:
            out["certified"] = cert
        return out
