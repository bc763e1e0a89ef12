"""What :func:`~bagnet.explain.explain` costs, checked before anything is computed.

An image is refused with a :class:`MapCostError` when its maps would take more
multiply-adds than a limit (:data:`DEFAULT_MAX_MACS` by default); the error names the
options that make it cheaper. A warning says when a small image was upscaled so much that
the model sees mostly interpolation.
"""

from __future__ import annotations

from collections.abc import Callable

from .._text import plural
from ._maps import EvidenceMapper

__all__ = ["DEFAULT_MAX_MACS", "UPSCALE_WARNING", "MapCostError"]

#: Most multiply-adds :func:`explain` spends on one image unless told otherwise: about 4x
#: a full-resolution map of a 224 x 224 image with the published BagNet-33 and all 1000
#: classes (965 GMACs, 11 s on a 2-core CPU), so roughly a minute or more on a CPU.
DEFAULT_MAX_MACS = 4 * 10**12

#: :func:`explain` warns when the image is upscaled so much that the model sees mostly
#: interpolation: its short side is less than this share of the size it is resized to
#: (or smaller than one patch).
UPSCALE_WARNING = 4


class MapCostError(ValueError):
    """:func:`explain` refused an image whose maps would cost more than its limit.

    ``str(error)`` names the options of :func:`explain` that make it cheaper;
    :attr:`cli_message` says the same with the options of ``bagnet explain``.

    Attributes:
        macs: the multiply-adds the image would have cost.
        limit: the limit it is above.
        cli_message: the message in terms of command-line options.
    """

    def __init__(self, message: str, cli_message: str, macs: int, limit: int):
        super().__init__(message)
        self.cli_message = cli_message
        self.macs = macs
        self.limit = limit


def _upscale_warning(original: tuple[int, int], resized: tuple[int, int], q: int) -> str | None:
    """A sentence when the image (``original``, ``resized``: height, width) was enlarged so
    much that the model sees mostly interpolation, else ``None``."""
    short, new_short = min(original), min(resized)
    if new_short <= short or (short * UPSCALE_WARNING >= new_short and short >= q):
        return None
    factor = new_short / short
    times = f"{factor:.0f}" if factor >= 10 else f"{factor:.1f}"
    what = f"smaller than one {q}x{q} px patch" if short < q else f"less than 1/{UPSCALE_WARNING} of the model's input size"
    return (f"upscaled {times}x from {original[1]}x{original[0]} px ({what}): the model sees interpolated pixels, "
            "so the prediction says little about the image")


def _gmacs(macs: int) -> str:
    g = macs / 1e9
    return f"{g:,.0f} GMACs" if g >= 10 else f"{g:.2g} GMACs"


def _check_cost(mapper: EvidenceMapper, what: str, resized: tuple[int, int], num_classes: int,
                limit: int, logits_cost: int, shape_at: Callable[[int], tuple[int, int]]) -> None:
    """Raise a :class:`MapCostError` naming cheaper options if explaining an image (``what``
    it is, in words), resized to ``resized`` (height, width), with ``num_classes`` maps costs
    more than ``limit`` MACs; ``shape_at(n)``: the input's (height, width) at img_size n."""
    map_cost = mapper.macs(resized, num_classes)
    total = logits_cost + map_cost
    if total <= limit:
        return
    h, w = resized
    lib, cli = [], []
    if mapper.stride != mapper._native:
        cost = logits_cost + mapper.macs(resized, num_classes, stride="native")
        still = "" if cost <= limit else ", still above the limit"
        lib.append(f"stride='native' (about {_gmacs(cost)}{still})")
        cli.append(f"--stride native (about {_gmacs(cost)}{still})")

    def cost_at(short: int) -> int:
        size = shape_at(short)
        return mapper.logits_macs(size) + mapper.macs(size, num_classes)

    q, short = mapper.patch_size, min(resized)
    if short > q and cost_at(q) <= limit:
        lo, hi = q, short - 1  # the largest short side within the limit (the cost grows with it)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost_at(mid) <= limit else (lo, mid - 1)
        lib.append(f"a smaller image (img_size={lo} or less)")
        cli.append(f"a smaller --img-size ({lo} or less)")
    else:
        lib.append("cropping the image (even its smallest size is above the limit)")
        cli.append("cropping the image (even the smallest --img-size is above the limit)")
    extra = map_cost - mapper.macs(resized, 1)  # what the classes after the first add
    if num_classes > 1 and extra >= 0.1 * total:
        each = _gmacs(extra // (num_classes - 1))
        lib.append(f"fewer classes (each costs about {each})")
        cli.append(f"fewer --classes (each costs about {each})")
    head = (f"explaining {what} resized to {w}x{h}, with "
            f"{plural(num_classes, 'class')} at map stride {mapper.stride} would take about {_gmacs(total)} "
            f"(multiply-adds), above the limit of {_gmacs(limit)}. Cheaper: ")
    raise MapCostError(
        head + "; ".join(lib) + "; or raise the limit (max_macs=None: none)",
        head + "; ".join(cli) + "; or raise the limit (--max-gmacs, 0: none)",
        total,
        limit,
    )
