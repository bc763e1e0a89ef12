"""What an explored image says about adversarial stickers: the BagNet certificate and
PatchCleanser's verdict (a mixin of :class:`bagnet.app.explorer.ExploredImage`, which
holds the state these methods read: ``explorer``, ``display``, ``source``, the patch logits
and the caches)."""

from __future__ import annotations

import copy
import threading

from ..explain._explain import certificate_record
from ._cleanser import cleanser_verdict

__all__: list[str] = []


class _Certificates:
    """:meth:`certificate` and :meth:`cleanser` of an explored image."""

    # -- certified robustness to adversarial patches ------------------------------------

    def certificate(self, patch: str, defense: str = "mask") -> dict:
        """Whether the defended prediction is certified against any ``patch`` sticker.

        Computed by :mod:`bagnet.robust` from the patch logits of the upload's pass (no
        further pass through the model). ``patch`` is a side in pixels of the model's input
        (``"16"``, ``"16px"``) or a share of its area (``"2%"``); ``defense`` is ``"mask"``
        (PatchGuard) or ``"clip"`` (Clipped BagNet). Returns the record ``bagnet explain
        --certify-patch`` writes (:func:`bagnet.explain._explain.certificate_record`): the
        defended prediction, ``certified``, ``margin``, a ``message`` and, for ``"mask"``,
        ``removed_box_resized`` (the window the masking removed, in the model input's
        pixels, as the patches' ``box``) and ``removed_box`` (in the original image's).

        Each (patch, defense) is computed once per image: the page's line, the JSON and the
        figure downloads ask for the same one.

        Raises:
            ValueError: a bad patch size or defence.
        """
        from ..robust import RobustBagNet

        key = (patch, defense)
        with self._lock:
            if key in self._certificates:
                return copy.deepcopy(self._certificates[key])
        if defense not in ("mask", "clip"):
            raise ValueError(f"defense must be 'mask' or 'clip', got {defense!r}")
        if not isinstance(patch, str):
            raise ValueError(f"patch must be a string such as '2%' or '16', got {patch!r}")
        self.own_patch_logits()
        ex = self.explorer
        robust = RobustBagNet(ex.model, patch, defense)
        h, w = self.display.shape[-2:]
        geo = robust.geometry((h, w))
        cert = robust.certify_evidence(self._patch_logits[None], geo.window, geo.patch_size)
        record = certificate_record(cert, 0, patch=patch, class_names=ex.classes, receptive_field=ex.receptive_field,
                                    patch_stride=ex.patch_stride, resized_size=[w, h], analysed_box=self.source["box"])
        with self._lock:
            self._certificates[key] = record
        return copy.deepcopy(record)

    def cleanser(self, patch: str, model: str = "reference") -> dict:
        """PatchCleanser's verdict against any ``patch`` sticker for a classifier of this image:
        ``model="reference"``, the explorer's ``cleanser_model`` (e.g. a ResNet-18), or
        ``"bagnet"``, the explored model itself.

        The image is classified under each of the k x k masks and each pair of masks
        (666 passes for k = 6) and once whole; the record
        (:func:`bagnet.app._cleanser.cleanser_verdict`) gives the double-masking prediction
        and its case, the one-mask predictions, how many two-mask predictions agree, and
        whether every one does (certified). Computed once per (patch, model) and image; a
        second request for it waits for the first.

        Raises:
            ValueError: a bad patch size or model.
            LookupError: ``"reference"`` without a ``cleanser_model``.
        """
        ex = self.explorer
        cm = ex.cleanser_for(model)
        if not isinstance(patch, str):
            raise ValueError(f"patch must be a string such as '2%' or '16', got {patch!r}")
        key = (patch, model)
        with self._lock:
            if key in self._verdicts:
                return copy.deepcopy(self._verdicts[key])
        from ..robust import mask_set

        h, w = self.display.shape[-2:]
        masks = mask_set((h, w), patch, cm.masks)  # a bad size is refused at once, not after a wait
        with self._lock:
            gate = self._verdict_gates.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._verdicts:
                    return copy.deepcopy(self._verdicts[key])
                state = self._progress[key] = {"state": "waiting", "done": 0, "total": masks.certification_passes + 1}

            def done(n: int) -> None:
                with self._lock:
                    state["done"] += n

            try:
                with ex._cleanser_lock:
                    with self._lock:
                        state["state"] = "computing"
                    record = cleanser_verdict(cm, cm.input(self._x, self.display), patch=patch,
                                              class_names=ex.classes, analysed_box=self.source["box"],
                                              slots=ex._slots, device=ex.device, progress=done)
            finally:
                with self._lock:
                    self._progress.pop(key, None)
            with self._lock:
                self._verdicts[key] = record
                self._verdict_gates.pop(key, None)
        return copy.deepcopy(record)

    def cleanser_state(self, patch: str, model: str = "reference") -> tuple[dict | None, dict]:
        """``(verdict or None, progress)`` of :meth:`cleanser` without computing anything:
        progress is ``{"state": "done" | "computing" | "waiting" | "not started", "done",
        "total"}`` (masked images classified so far, of ``total``)."""
        ex = self.explorer
        cm = ex.cleanser_for(model)
        from ..robust import mask_set

        total = mask_set(tuple(self.display.shape[-2:]), patch, cm.masks).certification_passes + 1
        key = (patch, model)
        with self._lock:
            if key in self._verdicts:
                return copy.deepcopy(self._verdicts[key]), {"state": "done", "done": total, "total": total}
            if key in self._progress:
                return None, dict(self._progress[key])
        return None, {"state": "not started", "done": 0, "total": total}
