"""Reading the explorer server's query parameters, and the error they answer with."""

from __future__ import annotations

from .explorer import RESOLUTIONS, ExploredImage

__all__ = ["HTTPError"]


class HTTPError(Exception):
    """An error answered to the client as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _parse_certify(query: dict, name: str) -> tuple[str | None, str]:
    """``(patch size or None, defence)`` of a request: the size under ``name``, the defence
    under ``defense`` (``mask`` by default; refused without a size, where it would do nothing)."""
    patch, defense = query.get(name), query.get("defense")
    if patch is None and defense is not None:
        raise HTTPError(400, f"defense={defense!r} needs a patch size to certify against ({name}=2%, ...)")
    if defense is not None and defense not in ("mask", "clip"):
        raise HTTPError(400, f"defense must be 'mask' or 'clip', got {defense!r}")
    if patch is not None and (len(patch) > 16 or not patch.strip()):
        raise HTTPError(400, f"{name} must be a patch size such as 2% or 16 (pixels), got {patch[:40]!r}")
    return patch, defense or "mask"


def _parse_patch(query: dict, name: str) -> str:
    """The patch size a request must give under ``name``."""
    patch = query.get(name)
    if patch is None:
        raise HTTPError(400, f"give the patch size to certify against, e.g. {name}=2% (or a side in pixels)")
    if len(patch) > 16 or not patch.strip():
        raise HTTPError(400, f"{name} must be a patch size such as 2% or 16 (pixels), got {patch[:40]!r}")
    return patch


def _certify(analysis: ExploredImage, patch: str, defense: str) -> dict:
    try:
        return analysis.certificate(patch, defense)
    except ValueError as e:  # unreadable size, or a patch larger than the image
        raise HTTPError(400, str(e)) from None


def _parse_res(query: dict) -> str:
    res = query.get("res", "native")
    if res not in RESOLUTIONS:
        raise HTTPError(400, f"res must be 'native' or 'full', got {res!r}")
    return res


def _parse_vmax(query: dict) -> float | None:
    raw = query.get("vmax")
    if raw is None:
        return None
    try:
        vmax = float(raw)
    except ValueError:
        vmax = float("nan")
    if not 0 < vmax < 1e9:  # also refuses nan and inf
        raise HTTPError(400, f"vmax must be a positive number (the colour scale), got {raw!r}")
    return vmax


def _parse_class(analysis: ExploredImage, query: dict) -> tuple[int, str]:
    """``(class, resolution)`` of a view request; the top class when none is named."""
    res = _parse_res(query)
    raw = query.get("class")
    if raw is None:
        return analysis.top_class, res
    try:
        cls = int(raw)
    except ValueError:
        raise HTTPError(400, f"class must be a class index, got {raw!r}") from None
    if not 0 <= cls < analysis.num_classes:
        raise HTTPError(400, f"class {cls} is out of range (the model has {analysis.num_classes} classes)")
    return cls, res
