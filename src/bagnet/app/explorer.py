"""One image's explanation, computed once and then looked at class by class.

:class:`Explorer` wraps a model for the demo report and the web page. Its
:meth:`Explorer.explore` returns an :class:`ExploredImage` holding the logits and the
native-resolution evidence maps of every class (one cheap pass), the "none of these
classes" check, one colour scale for all its maps, and the photo itself for display.
Full-resolution maps cost one pass the first time one is asked for: models with few
classes keep the maps of all classes; models with many (ImageNet) keep the features
before the classifier in the explorer's bounded :class:`FeatureCache`, from which each
further class is one dot product per pixel. The maps and patches are
:mod:`bagnet.explain`'s; an ExploredImage turns into an
:class:`~bagnet.explain.Explanation` for any set of classes without recomputing.
Everything an ExploredImage holds is its own, so many can be used from many threads.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
import weakref
from collections.abc import Sequence
from typing import BinaryIO

import torch
from PIL import Image
from torch import nn

from .._text import plural
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..data.transforms import Preprocessing
from ..explain import (
    EvidenceMapper,
    Explanation,
    MapGeometry,
    Patch,
    Prediction,
    UnknownCheck,
    colour_scale,
    top_patches,
    unknown_check,
)
from ..explain._colour import SCALE_PERCENTILE  # of |evidence|: an image's colour scale
from ..explain._images import ImageLike
from ..models._base import patch_head
from ._cache import DEFAULT_CACHE_BYTES, FeatureCache
from ._certify_view import _Certificates
from ._cleanser import ROLES, CleanserModel, reference_model
from ._images import _photo
from ._views import _FULL_ALL_CLASSES, _Views

__all__ = ["DEFAULT_CACHE_BYTES", "RESOLUTIONS", "ExploredImage", "Explorer", "FeatureCache"]

RESOLUTIONS = ("native", "full")
# Full-resolution maps a many-class image keeps besides the features (the latest viewed).
_KEEP_FULL_MAPS = 16


class Explorer:
    """A model ready to explain images; shared by all requests of a server.

    Args:
        model: a BagNet from :func:`bagnet.create_model` (class names, mean and std are
            read from ``model.pretrained_cfg``). It is put in eval mode.
        class_names: names to show for the classes, e.g. ``"tench"`` for a model whose
            classes are WordNet ids (default: the ``class_names`` of the model's meta if
            it has them, else its ``classes``).
        device: where to compute.
        img_size: short side, in pixels, that images are resized to (default: the size the
            model was trained at, else 224). Before resizing, the long side is cut to at
            most twice the short side (the centre is kept), which bounds the memory and
            work one image can ask for whatever its shape.
        top_k: number of most predictive patches outlined per class.
        max_concurrent: images decoded, prepared or passed through the model at the same
            time (others wait). One by default: a pass already uses every core, and
            parallel passes would only fight over them.
        cache_bytes: bound on the memory of the full-resolution features kept for models
            with many classes (:class:`FeatureCache`, shared by all images; default 1 GiB).
            While an image's features are kept, switching it to another class costs one
            dot product per pixel instead of a pass through the model.
        dtype: arithmetic of the evidence maps (see :func:`~bagnet.explain.evidence_map`);
            ``torch.bfloat16`` is faster on hardware with bfloat16 units but approximate.
            The predictions always come from the float32 model.
        cleanser_model: a second classifier (any model, e.g. a torchvision ResNet-18) whose
            PatchCleanser verdict :meth:`ExploredImage.cleanser` gives next to the BagNet's
            certificate. It must have the model's classes, matched by name
            (:func:`bagnet.data.classes.class_mapping`); it sees the same pixels, normalized
            with its own mean and std (see :mod:`bagnet.app._cleanser`). It is put in eval mode.
        cleanser_masks: k, PatchCleanser's masks per axis (k x k masks; the paper's 6).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        img_size: int | None = None,
        top_k: int = 5,
        max_concurrent: int = 1,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        dtype: torch.dtype | str | None = None,
        cleanser_model: nn.Module | None = None,
        cleanser_masks: int = 6,
    ):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **(getattr(model, "pretrained_cfg", None) or {})}
        k = int(model.num_classes)
        if class_names is not None and len(class_names) != k:
            raise ValueError(f"{plural(len(class_names), 'class name')} for a model with {plural(k, 'class')}")
        names = class_names or self.cfg.get("class_names") or self.cfg.get("classes")
        self.classes = [str(c) for c in names] if names and len(names) == k else [f"class {i}" for i in range(k)]
        self.model_name = getattr(model, "model_name", type(model).__name__)
        self.receptive_field = int(model.receptive_field)
        self.patch_stride = int(model.patch_stride)
        # bagnet's one preprocessing, the model's own: what eval scored is what is explored
        self.preprocessing = Preprocessing.from_cfg(self.cfg, img_size or None)
        self.img_size = int(self.preprocessing.img_size)
        if self.img_size < self.receptive_field:
            raise ValueError(f"img_size {self.img_size} is smaller than the receptive field {self.receptive_field}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = int(top_k)
        # Folded once here, not per request.
        self._mappers = {
            "native": EvidenceMapper(model, stride="native", device=self.device, dtype=dtype),
            "full": EvidenceMapper(model, stride=1, device=self.device, dtype=dtype),
        }
        self.map_dtype = str(self._mappers["full"].dtype).removeprefix("torch.")
        # One bound for everything that takes memory or cores per image: decoding,
        # resizing and the model passes.
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.cache = FeatureCache(cache_bytes)
        self._keys = itertools.count()
        # PatchCleanser verdicts: one computed at a time (each is hundreds of passes; two
        # would only split the cores), each pass taking the model slot for itself only.
        self._cleanser_lock = threading.Lock()
        self._cleansers: dict[str, CleanserModel] = {}
        if cleanser_model is not None:
            ids = self.cfg.get("classes")
            self._cleansers["reference"] = reference_model(
                cleanser_model, classes=[str(c) for c in ids] if ids and len(ids) == k else self.classes,
                explorer_name=self.model_name, img_size=self.img_size, crop_pct=self.preprocessing.crop_pct,
                mean=self.preprocessing.mean, std=self.preprocessing.std, device=self.device, masks=cleanser_masks)
        # PatchCleanser works for any classifier, the BagNet too (its own certificates are cheaper).
        self._cleansers["bagnet"] = CleanserModel(self.model, self.model_name, "bagnet", self.preprocessing,
                                                  same_input=True, classes_matched="the explored model itself",
                                                  masks=cleanser_masks)

    @property
    def cleanser_model(self) -> CleanserModel | None:
        """The reference classifier prepared for PatchCleanser verdicts, or ``None``."""
        return self._cleansers.get("reference")

    def cleanser_for(self, role: str = "reference") -> CleanserModel:
        """The classifier whose PatchCleanser verdict ``role`` names: ``"reference"`` (the
        ``cleanser_model``) or ``"bagnet"`` (the explored model itself).

        Raises:
            LookupError: no reference model was given.
            ValueError: an unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"model must be one of {', '.join(ROLES)}, got {role!r}")
        if role not in self._cleansers:
            raise LookupError("no PatchCleanser reference model: pass Explorer(..., cleanser_model=...), or start "
                              "the server with bagnet serve --cleanser-model SPEC (e.g. resnet18@random)")
        return self._cleansers[role]

    def cache_info(self) -> dict:
        """What the feature cache holds: ``{"images", "bytes", "max_bytes", "hits", "misses"}``."""
        return self.cache.info()

    def full_maps(self, key: int, x: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, bool]:
        """Full-resolution maps ``[len(classes), H, W]`` of the image ``x`` known to the
        feature cache as ``key``: from its cached features, else after one pass that
        computes (and, within the bound, keeps) them. Also says whether they were kept."""
        features = self.cache.get(key)
        kept = True
        if features is None:
            with self._slots:
                features = self._mappers["full"].features(x.to(self.device))
            kept = self.cache.put(key, features)
        return self._mappers["full"].classify(features, list(classes)).float().cpu(), kept

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare(self, image: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(normalized, display)`` ``[3, H, W]`` tensors of an image (path, PIL, array, tensor).

        The long side is first cut to at most twice the short side (the centre is kept),
        in the original image's pixels, and only then is the short side resized to
        ``img_size``: the work is bounded for every shape (a 2000x1 image becomes its
        centre 2x1 pixels, not a 224 x 448,000 tensor).
        """
        x, shown, _ = self._prepare(image)
        return x, shown

    def _prepare(self, image) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """:meth:`prepare` and where the model's input lies in the image:
        ``{"size": [W, H], "box": [x0, y0, x1, y1]}`` in the decoded image's pixels."""
        prepared = self.preprocessing.prepare(image)
        return prepared.input, prepared.display, {"size": list(prepared.size), "box": list(prepared.box)}

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x[None].to(self.device))[0].float().cpu()

    def _logits_and_patch_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[K]`` and the model's own (unpadded) patch logits ``[K, h, w]`` of one
        normalized image, from one pass: the logits are the head on the mean feature, as
        ``model(x)`` computes them, and the patch logits, which certificates need, are the
        same head at every location of the same features."""
        m = self.model
        with torch.inference_mode():
            features = m.forward_features(x[None].to(self.device))
            logits = m.forward_head(features)
            return logits[0].float().cpu(), patch_head(m.get_classifier(), features)[0].float().cpu()

    def _evidence(self, x: torch.Tensor, classes: Sequence[int] | None, res: str) -> torch.Tensor:
        if res not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {res!r}")
        return self._mappers[res](x.to(self.device), classes).float().cpu()

    def evidence(self, x: torch.Tensor, classes: Sequence[int] | None, res: str) -> torch.Tensor:
        """Padded evidence maps ``[len(classes), h, w]`` of one normalized image, on the CPU."""
        with self._slots:
            return self._evidence(x, classes, res)

    def logits(self, image: ImageLike) -> torch.Tensor:
        """Class logits ``[K]`` of one image, resized as :meth:`prepare` does."""
        with self._slots:
            return self._logits(self.prepare(image)[0])

    def explore(
        self, image: ImageLike | bytes | BinaryIO, name: str = "image", *, max_pixels: int | None = None
    ) -> ExploredImage:
        """Predictions and native evidence maps of all classes for one image.

        ``image`` may also be an image file's bytes or a binary file object: it is decoded
        here, inside the same concurrency bound as the model passes (``max_concurrent``),
        JPEGs at a reduced scale where the model does not need the full one.

        Raises:
            ImageError: unreadable file, or more than ``max_pixels`` pixels.
        """
        with self._slots:
            if isinstance(image, (bytes, bytearray, memoryview)):
                image = io.BytesIO(image)
                image.name = name  # load_image's messages name the file
            # Decoded as the preprocessing decodes every file (JPEGs at a reduced scale that
            # still leaves a sharp photo to show), so the input is the one eval scores.
            if isinstance(image, io.IOBase):
                image = self.preprocessing.load(image, max_pixels=max_pixels)
            elif max_pixels is not None:
                raise ValueError("max_pixels applies to image files and bytes only")
            elif isinstance(image, (str, os.PathLike)):
                image = self.preprocessing.load(image)
            photo = _photo(image) if isinstance(image, Image.Image) else None
            x, shown, where = self._prepare(image)
            logits, patch_logits = self._logits_and_patch_logits(x)
            return ExploredImage(self, name, x, shown, logits, self._evidence(x, None, "native"), where,
                                 photo=photo, patch_logits=patch_logits)

    analyse = explore  # the old name (the command line spells it "analyze"; the app explores)


class ExploredImage(_Certificates, _Views):
    """Predictions and evidence maps of one image (made by :meth:`Explorer.explore`).

    Maps use the paper's padded geometry: at full resolution entry ``(y, x)`` is the
    evidence of the q x q patch centred on pixel ``(y, x)``; the native map holds every
    ``patch_stride``-th of those entries.

    Attributes:
        name: the image's name (file name, sample name).
        source: ``{"size": [W, H], "box": [x0, y0, x1, y1]}``: the original image's size
            and the part of it the model saw (the centre, when its long side was more than
            twice the short side).
        display: the resized image in [0, 1], ``[3, H, W]``; ``image`` is it as PIL.
        logits, probs: ``[K]``.
        unknown: whether the image is probably none of the model's classes
            (:func:`bagnet.explain.unknown_check`); ``None`` when the model carries no
            calibrated threshold.
        scale: the colour scale of all this image's maps: ``+-scale`` spans the colour
            bar (the 99th percentile of |evidence| over the native maps of its top classes).
    """

    def __init__(self, explorer: Explorer, name: str, x: torch.Tensor, display: torch.Tensor, logits, native,
                 source: dict | None = None, *, photo: bytes | None = None, patch_logits: torch.Tensor | None = None):
        self.explorer = explorer
        self._patch_logits = patch_logits
        self.name = name
        h, w = display.shape[-2:]
        self.source = source or {"size": [w, h], "box": [0, 0, w, h]}
        self.display = display
        self.image = Image.fromarray((display.permute(1, 2, 0) * 255).round().byte().numpy())
        self._x = x
        self.logits = logits
        self.probs = torch.softmax(logits.double(), 0).float()
        self.unknown: UnknownCheck | None = unknown_check(explorer.model, logits)  # type: ignore[assignment]
        self._photo = photo
        top = torch.argsort(logits, descending=True)[: explorer.top_k]
        self.scale = colour_scale(native[top], SCALE_PERCENTILE)
        self._maps: dict[str, dict[int, torch.Tensor]] = {"native": dict(enumerate(native)), "full": {}}
        self._lock = threading.Lock()
        self._certificates: dict[tuple[str, str], dict] = {}  # (patch, defense) -> certificate()
        self._verdicts: dict[tuple[str, str], dict] = {}  # (patch, role) -> cleanser()
        self._verdict_gates: dict[tuple[str, str], threading.Lock] = {}
        self._progress: dict[tuple[str, str], dict] = {}  # verdicts being computed or waited for
        self._key = next(explorer._keys)
        # The cached features go when the image does (e.g. dropped from the server's store).
        weakref.finalize(self, explorer.cache.discard, self._key)

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

    def prediction(self, cls: int) -> Prediction:
        return Prediction(cls, self.class_name(cls), float(self.probs[cls]), float(self.logits[cls]))

    def predictions(self, n: int = 10) -> list[dict]:
        """The ``n`` most probable classes: ``{"index", "name", "probability", "logit"}``."""
        return [self.prediction(c).to_dict() for c in self.ranking(n)]

    # -- maps --------------------------------------------------------------------------

    def evidence(self, cls: int, res: str = "native") -> torch.Tensor:
        """The ``[h, w]`` evidence map of class ``cls``; full resolution is computed once."""
        if not 0 <= cls < self.num_classes:
            raise ValueError(f"class {cls} is out of range for {plural(self.num_classes, 'class')}")
        if res not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {res!r}")
        maps = self._maps[res]
        # One lock per image: a second request for the same image waits for the first
        # pass instead of repeating it; other images are not held up.
        with self._lock:
            if cls in maps:
                return maps[cls]
            if res == "native" or self.num_classes <= _FULL_ALL_CLASSES:
                wanted = list(range(self.num_classes))
                maps.update(zip(wanted, self.explorer.evidence(self._x, wanted, res)))
                return maps[cls]
            # Many classes: from the cached features. Should they not fit in the cache, the
            # top classes come with this pass, so that the likely next clicks are free.
            wanted = [cls]
            if self._key not in self.explorer.cache:
                wanted += [c for c in self.ranking(self.explorer.top_k) if c not in maps and c != cls]
            new, _ = self.explorer.full_maps(self._key, self._x, wanted)
            maps.update(zip(wanted, new))
            while len(maps) > max(_KEEP_FULL_MAPS, len(wanted)):
                del maps[next(iter(maps))]
            return maps[cls]

    def geometry(self, res: str = "native") -> MapGeometry:
        """Where the entries of this image's maps sit in it."""
        return self.explorer._mappers[res].geometry(tuple(self.display.shape[-2:]))

    def patches(self, cls: int, res: str = "native", k: int | None = None) -> list[Patch]:
        """The ``k`` most predictive patches of class ``cls`` that share no pixel, best first:
        the model's own patches (every patch stride, wholly inside the image), the ones its
        logit averages, as :func:`bagnet.explain.explain` lists them, whatever ``res`` the
        map is drawn at."""
        own = self.own_patch_logits()
        geometry = MapGeometry(self.explorer.receptive_field, self.explorer.patch_stride, 0,
                               tuple(self.display.shape[-2:]))
        return top_patches(own[cls], geometry, k=k or self.explorer.top_k, classes=[cls], non_overlapping=True)

    def own_patch_logits(self) -> torch.Tensor:
        """The model's own (unpadded) patch logits ``[K, h, w]`` of this image."""
        with self._lock:  # made on first use for images explored before it was kept
            if self._patch_logits is None:
                with self.explorer._slots:
                    self._patch_logits = self.explorer._logits_and_patch_logits(self._x)[1]
        return self._patch_logits

    def explanation(self, classes: Sequence[int], res: str = "native", *, n: int = 10) -> Explanation:
        """The :class:`~bagnet.explain.Explanation` of ``classes`` (its ``to_dict`` and ``plot``)."""
        classes = list(dict.fromkeys(int(c) for c in classes))
        return Explanation(
            image=self.display,
            predictions=[self.prediction(c) for c in self.ranking(n)],
            classes=classes,
            evidence=torch.stack([self.evidence(c, res) for c in classes]),
            patches=[self.patches(c, res) for c in classes],
            geometry=self.geometry(res),
            probabilities=self.probs,
            logits=self.logits,
            class_names=self.explorer.classes,
            model_name=self.explorer.model_name,
            unknown=self.unknown,
            source=self.source,
            patch_stride=self.explorer.patch_stride,
        )


Analysis = ExploredImage  # the old name; it clashed with ``bagnet.analysis`` (the paper's experiments)
