"""Clean, certified and attacked accuracy of a model over batches of images.

One patch-logit pass per batch serves every defence and patch size (the certificates are
arithmetic on it); the attack, when asked for, runs per defence and patch size.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._attack import patch_attack
from ._certificate import _eval_mode
from ._cleanser import PatchCleanser
from ._defense import RobustBagNet
from ._geometry import patch_pixels

__all__ = ["RobustnessSummary", "plot_certified_accuracy", "robustness_records", "summarize"]


def robustness_records(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, list[Any]]],
    patch_sizes: Sequence[int | float | str],
    defenses: Sequence[str],
    *,
    certify: bool = True,
    attack: dict | None = None,
    defense_options: dict | None = None,
    cleanser_options: dict | None = None,
) -> list[dict]:
    """Per image and per defence and patch size: prediction, certificate, attacked prediction.

    The model runs in eval mode throughout (evidence, certificates, attacks); every module
    keeps its own mode afterwards.

    Args:
        model: a BagNet for ``"mask"`` and ``"clip"``; any classifier for ``"cleanser"``
            and ``"none"`` (whose certificate, never certified, needs a BagNet's evidence:
            without it ``"none"`` gets a prediction and no certificate).
        batches: ``(images [B, C, H, W] on the model's device, targets [B] as model outputs,
            keys)``; each key (e.g. a file path) is copied into its image's record.
        patch_sizes: sizes as :func:`patch_pixels` reads them.
        defenses: names from :data:`DEFENSES`.
        certify: compute certificates.
        attack: keyword arguments of :func:`patch_attack`, or ``None`` for no attack. The
            cleanser is attacked through its ``forward`` (the double-masking decision, with
            the one-mask predictions' mean softmax as the differentiable surrogate, see
            :meth:`PatchCleanser.forward`), ``chunk`` divided by its number of masks so
            that one pass still classifies about ``chunk`` images.
        defense_options: keyword arguments of :class:`RobustBagNet` for ``"clip"`` (without
            a squashing, :func:`clip_squashing` decides it).
        cleanser_options: keyword arguments of :class:`PatchCleanser` for ``"cleanser"``
            (``masks``, ``fill``, ``mean``, ``std``, ``chunk``).

    Returns:
        One dict per image: ``key``, ``target`` and ``results``, a list of dicts with
        ``defense``, ``patch`` (as given), ``patch_px``, ``prediction``, and where computed
        ``certified``, ``margin``, ``window`` (cleanser: the mask size in pixels),
        ``removed`` (mask: the removed window's grid corner), ``passes`` (the images the
        model classified for this result's certificate, or its prediction without one: 1
        but for the cleanser), for the cleanser ``stride``, ``masks`` (how many) and
        ``image_size``, and ``attacked_prediction``, ``flipped`` and ``sticker`` (top, left).

    Raises:
        ValueError: ``"mask"`` or ``"clip"`` for a model without patch logits; for
            ``"mask"``, a patch whose window covers the whole evidence map; for
            ``"cleanser"``, a mask set that cannot be built (see :func:`mask_set`).
    """
    records: list[dict] = []
    # The BagNet defences work on patch logits, and so does the (never certified) certificate
    # of the plain model; the cleanser and the plain prediction need only the model's outputs.
    has_evidence = callable(getattr(model, "patch_logits", None))
    use_evidence = any(d in ("mask", "clip") for d in defenses) or (certify and has_evidence and "none" in defenses)
    if use_evidence and not has_evidence:
        raise ValueError(f"{type(model).__name__} has no patch logits: the mask and clip defences need a BagNet "
                         "(the cleanser defends any classifier)")
    # Evidence, certificates and attacks of the model in eval mode (BatchNorm on batch
    # statistics would let one image's sticker change another's evidence); every module
    # gets its own mode back, also when a batch fails.
    with _eval_mode(model):
        for x, targets, keys in batches:
            if not len(x):
                continue
            records += _batch_records(model, x, targets, keys, patch_sizes, defenses, use_evidence=use_evidence,
                                      certify=certify, attack=attack, defense_options=defense_options,
                                      cleanser_options=cleanser_options)
    return records


def _batch_records(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, keys: list[Any],
                   patch_sizes: Sequence[int | float | str], defenses: Sequence[str], *, use_evidence: bool,
                   certify: bool, attack: dict | None, defense_options: dict | None,
                   cleanser_options: dict | None) -> list[dict]:
    rows = [{"key": k, "target": int(t), "results": []} for k, t in zip(keys, targets.tolist())]
    evidence = None
    if use_evidence:
        with torch.no_grad():
            evidence = model.patch_logits(x)
    image_size = tuple(x.shape[-2:])
    for defense in defenses:
        for size in patch_sizes:
            if defense == "cleanser":
                outs = _cleanser_records(model, x, targets, size, certify=certify, attack=attack,
                                         options=cleanser_options or {})
                for row, out in zip(rows, outs):
                    row["results"].append(out)
                continue
            opts = (defense_options or {}) if defense == "clip" else {}
            robust = RobustBagNet(model, size, defense, **opts) if evidence is not None else None
            p = patch_pixels(size, image_size)
            if robust is not None:
                cert = robust.certify_evidence(evidence, image_size=image_size)
                pred = cert.prediction
            else:
                with torch.no_grad():
                    pred = model(x).argmax(1)
                cert = None
            # one pass of the model: the patch logits all BagNet defences share, or the logits
            outs = [{"defense": defense, "patch": str(size), "patch_px": p, "prediction": int(v), "passes": 1}
                    for v in pred.tolist()]
            if cert is not None and certify:
                for k, out in enumerate(outs):
                    out.update(certified=bool(cert.certified[k]), window=list(cert.window),
                               margin=float(cert.margin[k]) if torch.isfinite(cert.margin[k]) else None)
                    if cert.removed is not None:
                        out["removed"] = cert.removed[k].tolist()
            if attack is not None:
                result = patch_attack(robust if robust is not None else model, x, targets, p, **attack)
                for k, out in enumerate(outs):
                    tried = bool(result.position[k, 0] >= 0)
                    out.update(attacked_prediction=int(result.prediction[k]), flipped=bool(result.flipped[k]),
                               sticker=result.position[k].tolist() if tried else None)
            for row, out in zip(rows, outs):
                row["results"].append(out)
    return rows


def _cleanser_records(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, size: int | float | str, *,
                      certify: bool, attack: dict | None, options: dict) -> list[dict]:
    """One result per image of ``x`` for PatchCleanser against ``size`` px stickers."""
    cleanser = PatchCleanser(model, size, **options)
    masks = cleanser.mask_set(tuple(x.shape[-2:]))
    p = masks.patch_size
    if certify:
        cert = cleanser.certify(x)
        outs = [{"defense": "cleanser", "patch": str(size), "patch_px": p, "prediction": int(v),
                 "certified": bool(c), "margin": float(m) if torch.isfinite(m) else None,
                 "passes": masks.certification_passes}
                for v, c, m in zip(cert.prediction.tolist(), cert.certified.tolist(), cert.margin)]
    else:
        decision = cleanser.predict(x)
        outs = [{"defense": "cleanser", "patch": str(size), "patch_px": p, "prediction": int(v), "passes": int(n)}
                for v, n in zip(decision.prediction.tolist(), decision.passes.tolist())]
    for out in outs:
        out.update(window=list(masks.mask_size), stride=list(masks.stride), masks=len(masks),
                   image_size=list(masks.image_size))
    if attack is not None:
        # One pass of the defended model classifies every image under every mask.
        options = {**attack, "chunk": max(1, int(attack.get("chunk", 64)) // len(masks))}
        result = patch_attack(cleanser, x, targets, p, **options)
        for k, out in enumerate(outs):
            tried = bool(result.position[k, 0] >= 0)
            out.update(attacked_prediction=int(result.prediction[k]), flipped=bool(result.flipped[k]),
                       sticker=result.position[k].tolist() if tried else None)
    return outs


@dataclass
class RobustnessSummary:
    """Accuracies (percent) of one defence and patch size over a set of images, and
    ``passes``: the mean number of images the model classified per image for the
    certificate or prediction (``None`` where the records do not say)."""

    defense: str
    patch: str
    patch_px: int
    images: int
    clean: float
    certified: float | None = None
    attacked: float | None = None
    certified_but_flipped: int = 0
    passes: float | None = None

    def _repr_html_(self) -> str:
        """One table row of accuracies, shown inline by Jupyter."""

        def cell(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}%"

        flipped = (f"<p style='color:#b00000'><b>{self.certified_but_flipped} certified images flipped "
                   "by the attack: the certificate is broken</b></p>") if self.certified_but_flipped else ""
        return ("<table class='bagnet-robustness'><tr><th>defence</th><th>patch</th><th>images</th>"
                "<th>clean</th><th>certified</th><th>attacked</th></tr>"
                f"<tr><td>{self.defense}</td><td>{self.patch} ({self.patch_px} px)</td><td>{self.images}</td>"
                f"<td>{cell(self.clean)}</td><td>{cell(self.certified)}</td><td>{cell(self.attacked)}</td></tr>"
                f"</table>{flipped}")


def summarize(records: list[dict]) -> list[RobustnessSummary]:
    """One :class:`RobustnessSummary` per defence and patch size, in the records' order."""
    groups: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for row in records:
        for out in row["results"]:
            groups.setdefault((out["defense"], out["patch"]), []).append((row["target"], out))
    summaries = []
    for (defense, patch), items in groups.items():
        n = len(items)

        def pct(k: int, n: int = n) -> float:
            return 100.0 * k / n if n else 0.0

        s = RobustnessSummary(defense, patch, items[0][1]["patch_px"], n,
                              pct(sum(o["prediction"] == t for t, o in items)))
        if all("certified" in o for _, o in items):
            s.certified = pct(sum(o["certified"] and o["prediction"] == t for t, o in items))
        if all("passes" in o for _, o in items) and items:
            s.passes = sum(o["passes"] for _, o in items) / n
        if all("attacked_prediction" in o for _, o in items):
            s.attacked = pct(sum(o["attacked_prediction"] == t for t, o in items))
            s.certified_but_flipped = sum(bool(o.get("certified")) and o["flipped"] for _, o in items)
        summaries.append(s)
    return summaries


def plot_certified_accuracy(summaries: Sequence[RobustnessSummary], title: str | None = None) -> tuple[Any, Any]:
    """Certified (solid), attacked (dotted) and clean (dashed) accuracy against patch size,
    one colour per defence. Returns ``(fig, ax)``."""
    from ..explain._figures import new_figure

    fig = new_figure((5.5, 4.0))
    ax = fig.add_subplot()
    colours = {"mask": "tab:blue", "clip": "tab:orange", "none": "tab:gray", "cleanser": "tab:green"}
    for defense in dict.fromkeys(s.defense for s in summaries):
        rows = sorted((s for s in summaries if s.defense == defense), key=lambda s: s.patch_px)
        px = [s.patch_px for s in rows]
        colour = colours.get(defense, None)
        ax.plot(px, [s.clean for s in rows], "--", color=colour, alpha=0.6, label=f"{defense}: clean")
        if all(s.certified is not None for s in rows) and defense != "none":
            ax.plot(px, [s.certified for s in rows], "o-", color=colour, label=f"{defense}: certified")
        if all(s.attacked is not None for s in rows):
            ax.plot(px, [s.attacked for s in rows], "s:", color=colour, label=f"{defense}: attacked")
    ax.set_xlabel("patch side (pixels)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=8)
    fig.tight_layout()
    return fig, ax
