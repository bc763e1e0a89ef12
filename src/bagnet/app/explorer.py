"""One image's explanation, computed once and then looked at class by class.

:class:`Explorer` wraps a model for the demo report and the web page: it resizes an
image the way both show it, and :meth:`Explorer.analyse` returns an :class:`Analysis`
that holds the logits and the native-resolution evidence maps of every class (one
cheap pass), and computes full-resolution maps the first time they are asked for.
Everything an Analysis holds is its own; many can be used from many threads.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..explain import evidence_map

__all__ = ["Analysis", "Explorer", "RESOLUTIONS"]

RESOLUTIONS = ("native", "full")
# Models with at most this many classes get the full-resolution maps of all classes from
# one pass (the classifier is the cheap last step). Larger ones (ImageNet) get the top
# classes plus the one asked for, and each further class costs another pass.
_FULL_ALL_CLASSES = 32


class Explorer:
    """A model ready to explain images; shared by all requests of a server.

    Args:
        model: a BagNet from :func:`bagnet.create_model` (class names, mean and std are
            read from ``model.pretrained_cfg``).
        device: where to compute.
        img_size: short side, in pixels, that images are resized to (default: the size the
            model was trained at, else 224). The long side is centre-cropped to at most
            twice that.
        top_k: number of most predictive patches outlined per class.
        max_concurrent: model passes that may run at the same time (others wait). One by
            default: a pass already uses every core, and parallel passes would only
            fight over them.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "cpu",
        img_size: int | None = None,
        top_k: int = 5,
        max_concurrent: int = 1,
    ):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        k = int(model.num_classes)
        names = cfg.get("classes")
        self.classes = [str(c) for c in names] if names and len(names) == k else [f"class {i}" for i in range(k)]
        self.model_name = getattr(model, "model_name", type(model).__name__)
        self.receptive_field = int(model.receptive_field)
        self.patch_stride = int(model.patch_stride)
        self.img_size = int(img_size or cfg.get("img_size") or 224)
        if self.img_size < self.receptive_field:
            raise ValueError(f"img_size {self.img_size} is smaller than the receptive field {self.receptive_field}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = int(top_k)
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)[:, None, None]
        self._passes = threading.BoundedSemaphore(max_concurrent)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare(self, image: Image.Image) -> Image.Image:
        """Resize so the short side is ``img_size``; centre-crop the long side to at most twice that."""
        w, h = image.size
        scale = self.img_size / min(w, h)
        size = (max(self.img_size, round(w * scale)), max(self.img_size, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, Image.Resampling.BICUBIC)
        w, h = image.size
        cw, ch = min(w, 2 * self.img_size), min(h, 2 * self.img_size)
        if (cw, ch) != (w, h):
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Normalized ``[3, H, W]`` float tensor of an RGB image."""
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std

    def evidence(self, x: torch.Tensor, classes: Sequence[int] | None, res: str) -> torch.Tensor:
        """Padded evidence maps ``[len(classes), h, w]`` of one normalized image, on the CPU."""
        if res not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {res!r}")
        with self._passes:
            maps = evidence_map(self.model, x.to(self.device), classes=classes, stride=1 if res == "full" else "native")
        return maps.float().cpu()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with self._passes, torch.inference_mode():
            return self.model(x[None].to(self.device))[0].float().cpu()

    def logits(self, image: Image.Image) -> torch.Tensor:
        """Class logits ``[K]`` of one RGB image, resized as :meth:`prepare` does."""
        return self._logits(self.to_tensor(self.prepare(image)))

    def analyse(self, image: Image.Image, name: str = "image") -> Analysis:
        """Predictions and native evidence maps of all classes for one RGB image."""
        shown = self.prepare(image)
        x = self.to_tensor(shown)
        return Analysis(self, name, shown, x, self._logits(x), self.evidence(x, None, "native"))


class Analysis:
    """Predictions and evidence maps of one image (made by :meth:`Explorer.analyse`).

    Maps use the paper's padded geometry: at full resolution entry ``(y, x)`` is the
    evidence of the q x q patch centred on pixel ``(y, x)``; the native map holds every
    ``patch_stride``-th of those entries.
    """

    def __init__(self, explorer: Explorer, name: str, image: Image.Image, x: torch.Tensor, logits, native):
        self.explorer = explorer
        self.name = name
        self.image = image
        self._x = x
        self.logits = logits
        self.probs = torch.softmax(logits.double(), 0).float()
        self._maps = {"native": {c: native[c].numpy() for c in range(native.shape[0])}, "full": {}}
        self._lock = threading.Lock()

    # -- basic facts -------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.explorer.num_classes

    @property
    def top_class(self) -> int:
        return int(self.logits.argmax())

    def class_name(self, cls: int) -> str:
        return self.explorer.classes[cls]

    def ranking(self, n: int | None = None) -> list[int]:
        """Class indices by decreasing logit."""
        order = torch.argsort(self.logits, descending=True).tolist()
        return order if n is None else order[:n]

    def predictions(self, n: int = 10) -> list[dict]:
        return [
            {"index": c, "name": self.class_name(c), "prob": float(self.probs[c]), "logit": float(self.logits[c])}
            for c in self.ranking(n)
        ]

    # -- maps --------------------------------------------------------------------------

    def evidence(self, cls: int, res: str = "native") -> np.ndarray:
        """The ``[h, w]`` evidence map of class ``cls``; full resolution is computed once."""
        if not 0 <= cls < self.num_classes:
            raise ValueError(f"class {cls} is out of range for {self.num_classes} classes")
        if res not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {res!r}")
        maps = self._maps[res]
        if cls not in maps:
            # One lock per image: a second request for the same image waits for the first
            # pass instead of repeating it; other images are not held up.
            with self._lock:
                if cls not in maps:
                    if self.num_classes <= _FULL_ALL_CLASSES:
                        wanted = list(range(self.num_classes))
                    else:
                        wanted = [cls] + [c for c in self.ranking(self.explorer.top_k) if c not in maps and c != cls]
                    computed = self.explorer.evidence(self._x, wanted, res)
                    for c, m in zip(wanted, computed):
                        maps[c] = m.numpy()
        return maps[cls]

    def patch_boxes(self, cls: int, res: str = "native", k: int | None = None) -> list[dict]:
        """The ``k`` most predictive, non-overlapping patches: ``{"x", "y", "size", "score"}``
        with (x, y) the top-left corner in image pixels (may be negative at the border)."""
        stride = 1 if res == "full" else self.explorer.patch_stride
        return _top_patches(self.evidence(cls, res), stride, self.explorer.receptive_field, k or self.explorer.top_k)

    def heatmap_rgba(self, cls: int, res: str = "native") -> tuple[np.ndarray, float]:
        """The map coloured like the paper's figures, at image size; and its colour scale."""
        m = self.evidence(cls, res)
        h, w = self.image.size[1], self.image.size[0]
        if res == "native":
            # Native entry (i, j) is centred on pixel (s*i, s*j): every pixel takes the
            # value of the nearest centre.
            s = self.explorer.patch_stride
            rows = np.clip((np.arange(h) + s // 2) // s, 0, m.shape[0] - 1)
            cols = np.clip((np.arange(w) + s // 2) // s, 0, m.shape[1] - 1)
            m = m[rows[:, None], cols[None, :]]
        return colorize(m)

    def overlay(self, cls: int, res: str = "native", outline: bool = True, scale: int = 1) -> Image.Image:
        """The photo with the heatmap blended over it and the top patches outlined."""
        from PIL import ImageDraw

        rgba, _ = self.heatmap_rgba(cls, res)
        out = Image.alpha_composite(self.image.convert("RGBA"), Image.fromarray(rgba, "RGBA")).convert("RGB")
        if scale > 1:
            out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
        if outline:
            draw = ImageDraw.Draw(out)
            for box in self.patch_boxes(cls, res):
                x, y, q = box["x"] * scale, box["y"] * scale, box["size"] * scale
                draw.rectangle((x, y, x + q - 1, y + q - 1), outline=(255, 214, 10), width=max(1, scale))
        return out

    def patch_crops(self, cls: int, res: str = "native", size: int = 64) -> list[tuple[Image.Image, float]]:
        """The top patches of class ``cls`` cut from the image (black beyond its border),
        enlarged to ``size`` pixels; with their evidence."""
        out = []
        for box in self.patch_boxes(cls, res):
            x, y, q = box["x"], box["y"], box["size"]
            crop = self.image.crop((x, y, x + q, y + q)).resize((size, size), Image.Resampling.NEAREST)
            out.append((crop, box["score"]))
        return out

    def figure_png(self, cls: int, res: str = "native", dpi: int = 100) -> bytes:
        """A figure to download: the image, and its evidence for ``cls`` with the top
        patches outlined and a colour bar."""
        from matplotlib.figure import Figure  # not pyplot: figures are built in server threads
        from matplotlib.patches import Rectangle

        rgba, vmax = self.heatmap_rgba(cls, res)
        w, h = self.image.size
        fig = Figure(figsize=(2 * 4.2, 4.2 * h / w + 0.8), dpi=dpi, layout="constrained")
        ax_img, ax_map = fig.subplots(1, 2)
        ax_img.imshow(self.image)
        ax_img.set_title(f"{self.name}", fontsize=10)
        ax_map.imshow(self.image)
        shown = ax_map.imshow(rgba, interpolation="nearest")
        for i, box in enumerate(self.patch_boxes(cls, res)):
            ax_map.add_patch(Rectangle((box["x"] - 0.5, box["y"] - 0.5), box["size"], box["size"], fill=False, ec="#ffd60a", lw=1.5))
            ax_map.text(max(box["x"], 0) + 1, max(box["y"], 0) + 1, str(i + 1), color="#ffd60a", fontsize=8, va="top")
        ax_map.set_title(f"evidence for {self.class_name(cls)} ({100 * float(self.probs[cls]):.1f}%), {res} resolution", fontsize=10)
        for ax in (ax_img, ax_map):
            ax.set_axis_off()
        # The overlay is pre-coloured; the colour bar shows the scale it was coloured with.
        from matplotlib import cm, colors

        bar = cm.ScalarMappable(norm=colors.Normalize(-vmax, vmax), cmap="RdBu_r")
        fig.colorbar(bar, ax=ax_map, shrink=0.8, label="patch logit")
        del shown
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def view(self, cls: int, res: str = "native") -> dict:
        """What the page shows for one class: heatmap PNG (data URL), top patches, scale."""
        rgba, vmax = self.heatmap_rgba(cls, res)
        return {
            "class": cls,
            "name": self.class_name(cls),
            "res": res,
            "heatmap": png_data_url(Image.fromarray(rgba, "RGBA")),
            "patches": self.patch_boxes(cls, res),
            "vmax": vmax,
            "logit": float(self.logits[cls]),
            "prob": float(self.probs[cls]),
        }

    def summary(self, n: int = 10) -> dict:
        """What the page needs right after an upload."""
        w, h = self.image.size
        return {
            "name": self.name,
            "width": w,
            "height": h,
            "image": png_data_url(self.image, "JPEG"),
            "predictions": self.predictions(n),
            "top_class": self.top_class,
        }

    def to_dict(self, res: str = "native", n: int = 10) -> dict:
        """Predictions and, for the top ``n`` classes, top patches and the evidence map."""
        w, h = self.image.size
        ex = self.explorer
        out = {
            "image": self.name,
            "model": ex.model_name,
            "input_size": [h, w],
            "receptive_field": ex.receptive_field,
            "resolution": res,
            "map_stride": 1 if res == "full" else ex.patch_stride,
            "predictions": self.predictions(n),
            "evidence": {},
        }
        for c in self.ranking(n) if res == "native" or self.num_classes <= _FULL_ALL_CLASSES else self.ranking(ex.top_k):
            out["evidence"][self.class_name(c)] = {
                "class": c,
                "top_patches": self.patch_boxes(c, res),
                "map": np.round(self.evidence(c, res), 4).tolist(),
            }
        return out


def _top_patches(m: np.ndarray, stride: int, q: int, k: int) -> list[dict]:
    """Greedy: the highest entries whose q x q patches do not overlap a chosen one."""
    order = np.argsort(m, axis=None)[::-1]
    chosen: list[tuple[int, int]] = []
    off = (q - 1) // 2
    for flat in order:
        i, j = divmod(int(flat), m.shape[1])
        y, x = stride * i, stride * j
        if all(abs(y - cy) >= q or abs(x - cx) >= q for cy, cx in chosen):
            chosen.append((y, x))
            if len(chosen) == k:
                break
    return [
        {"x": x - off, "y": y - off, "size": q, "score": float(m[y // stride, x // stride])} for y, x in chosen
    ]


def colorize(m: np.ndarray, percentile: float = 99.0) -> tuple[np.ndarray, float]:
    """RGBA uint8 image of a map on a symmetric red-blue scale, as in the paper's figures.

    The scale is ``+-`` the ``percentile`` of ``|m|`` (the authors' ``plot_heatmap``), so one
    extreme patch does not wash out the rest. Weak evidence is drawn more transparent,
    so the photo shows through where the model sees little either way.
    """
    from matplotlib import colormaps

    vmax = float(np.percentile(np.abs(m), percentile)) if m.size else 0.0
    vmax = vmax if vmax > 0 else 1.0
    t = np.clip(m / vmax, -1.0, 1.0)
    rgba = colormaps["RdBu_r"]((t + 1.0) / 2.0)
    rgba[..., 3] = 0.25 + 0.75 * np.abs(t)
    return (rgba * 255 + 0.5).astype(np.uint8), vmax


def png_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """``data:`` URL of a PIL image (PNG, or JPEG for photos)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
