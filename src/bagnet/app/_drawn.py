"""A sample drawn here, not photographed: a golf ball on grass.

The shipped default model knows ten Imagenette classes and none of scikit-image's photos
shows one of them, so without this the demo could only ever be right by refusing. This
picture is one of the model's classes (golf ball) made from numbers alone, so it needs no
dataset image in the package: a shaded, dimpled sphere with a highlight and a soft
shadow on a mown-grass texture. Deterministic for a given size and seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["golf_ball"]


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly evenly spread unit vectors (the golden-angle spiral)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def _grass(size: int, rng: np.random.Generator) -> np.ndarray:
    """A mown-grass texture, float RGB in [0, 1]: blade-like streaks over mottled green."""
    noise = rng.random((size, size)).astype(np.float32)
    streaks = np.asarray(Image.fromarray((noise * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1)), np.float32)
    streaks = np.asarray(
        Image.fromarray(streaks.astype(np.uint8)).resize((size, size // 4)).resize((size, size), Image.Resampling.BICUBIC),
        np.float32,
    ) / 255
    mottle = rng.random((max(size // 32, 2), max(size // 32, 2))).astype(np.float32)
    mottle = np.asarray(Image.fromarray((mottle * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC),
                        np.float32) / 255
    light = 0.55 + 0.25 * mottle + 0.35 * (streaks - 0.5) + 0.15 * (noise - 0.5)
    # Mowing stripes, lighter and darker bands across the lawn.
    y = np.arange(size, dtype=np.float32)[:, None] / size
    light = light + 0.06 * np.sign(np.sin(2 * np.pi * 3 * (y + 0.1 * np.arange(size)[None, :] / size)))
    green = np.array([0.20, 0.50, 0.16], np.float32)
    return np.clip(light[..., None] * green[None, None, :] * 1.25, 0, 1)


def golf_ball(size: int = 320, seed: int = 0) -> Image.Image:
    """A golf ball on grass, ``size`` x ``size`` RGB.

    Args:
        size: the side in pixels (at least 32).
        seed: the grass texture's random seed.

    Raises:
        ValueError: size below 32.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng(seed)
    img = _grass(size, rng)

    radius = 0.30 * size
    cx, cy = 0.5 * size, 0.47 * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    # A soft shadow to the lower right, where the light from the upper left throws it.
    d = np.hypot((xx - cx - 0.12 * radius) / 1.15, (yy - cy - 0.85 * radius) / 0.45)
    img *= (1 - 0.55 * np.clip(1.15 - d / radius, 0, 1) ** 1.5)[..., None]

    u, v = (xx - cx) / radius, (yy - cy) / radius
    inside = u * u + v * v < 1
    w = np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
    normal = np.stack([u, v, w], -1)[inside]  # unit normals of the visible half

    # Dimples: about 330 shallow cups evenly spread; inside one, the surface normal tilts
    # toward the cup's centre, so each cup is lit on the far side and shaded on the near.
    centres = _fibonacci_sphere(330)
    dots = normal @ centres.T
    nearest = dots.argmax(1)
    c = centres[nearest]
    angle = np.arccos(np.clip(dots[np.arange(len(dots)), nearest], -1, 1))
    cup = 0.085  # cup radius, radians
    depth = np.clip(1 - angle / cup, 0, 1)
    tilt = (c - normal * (normal * c).sum(1, keepdims=True))
    tilt /= np.linalg.norm(tilt, axis=1, keepdims=True) + 1e-6
    bent = normal + 0.55 * (angle < cup)[:, None] * np.sin(np.pi * depth)[:, None] * tilt
    bent /= np.linalg.norm(bent, axis=1, keepdims=True)

    light = np.array([-0.45, -0.55, 0.70])
    light /= np.linalg.norm(light)
    diffuse = np.clip(bent @ light, 0, 1)
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    specular = np.clip(bent @ half, 0, 1) ** 40
    shade = 0.28 + 0.72 * diffuse
    ball = np.clip(shade[:, None] * np.array([0.96, 0.96, 0.93]) + 0.5 * specular[:, None], 0, 1)
    # A little green bounced from the grass on the lower rim.
    rim = np.clip(normal[:, 1], 0, 1) ** 3 * 0.12
    ball = ball * (1 - rim[:, None]) + rim[:, None] * np.array([0.25, 0.55, 0.2])
    img[inside] = ball

    # Anti-alias the ball's edge.
    out = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    big = out.resize((2 * size, 2 * size), Image.Resampling.NEAREST).filter(ImageFilter.GaussianBlur(0.6))
    return big.resize((size, size), Image.Resampling.LANCZOS)
