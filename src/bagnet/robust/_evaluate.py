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
) -> list[dict]:
    """Per image and per defence and patch size: prediction, certificate, attacked prediction.

    Args:
        model: a BagNet (any classifier when ``certify`` is off and ``defenses`` is ``["none"]``).
        batches: ``(images [B, C, H, W] on the model's device, targets [B] as model outputs,
            keys)``; each key (e.g. a file path) is copied into its image's record.
        patch_sizes: sizes as :func:`patch_pixels` reads them.
        defenses: names from :data:`DEFENSES`.
        certify: compute certificates (needs a BagNet).
        attack: keyword arguments of :func:`patch_attack`, or ``None`` for no attack.
        defense_options: keyword arguments of :class:`RobustBagNet` for ``"clip"``.

    Returns:
        One dict per image: ``key``, ``target`` and ``results``, a list of dicts with
        ``defense``, ``patch`` (as given), ``patch_px``, ``prediction``, and where computed
        ``certified``, ``margin``, ``window``, ``removed`` (mask: the removed window's grid
        corner), ``attacked_prediction``, ``flipped`` and ``sticker`` (top, left).
    """
    records: list[dict] = []
    # Torchvision models have no patch logits; they can only be attacked, undefended.
    use_evidence = certify or any(d != "none" for d in defenses)
    for x, targets, keys in batches:
        if not len(x):
            continue
        rows = [{"key": k, "target": int(t), "results": []} for k, t in zip(keys, targets.tolist())]
        evidence = None
        if use_evidence:
            with torch.no_grad():
                evidence = model.patch_logits(x)
        for defense in defenses:
            for size in patch_sizes:
                opts = (defense_options or {}) if defense == "clip" else {}
                robust = RobustBagNet(model, size, defense, **opts).eval() if evidence is not None else None
                p = patch_pixels(size, tuple(x.shape[-2:]))
                if robust is not None:
                    geo = robust.geometry(tuple(x.shape[-2:]))
                    cert = robust.certify_evidence(evidence, geo.window, p)
                    pred = cert.prediction
                else:
                    with torch.no_grad():
                        pred = model(x).argmax(1)
                    cert = None
                outs = [{"defense": defense, "patch": str(size), "patch_px": p, "prediction": int(v)}
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
        records += rows
    return records


@dataclass
class RobustnessSummary:
    """Accuracies (percent) of one defence and patch size over a set of images."""

    defense: str
    patch: str
    patch_px: int
    images: int
    clean: float
    certified: float | None = None
    attacked: float | None = None
    certified_but_flipped: int = 0

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
    colours = {"mask": "tab:blue", "clip": "tab:orange", "none": "tab:gray"}
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
