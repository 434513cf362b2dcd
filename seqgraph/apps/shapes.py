"""Rasterised shapes for the generated vision tasks: whole-array masks, no loop over pixels.

A shape is drawn from its centre (y, x) in pixels, its radius, and an angle in radians; the
mask tests every pixel centre at once, so a frame costs a few array operations.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # RGB in [0, 1]
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0),
}


def mask(kind: str, height: int, width: int, y: float, x: float, radius: float, angle=0.0):
    """(height, width) booleans: the pixels whose centres lie inside the shape."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    dy, dx = yy - y, xx - x
    if kind == "circle":
        return dy * dy + dx * dx <= radius * radius
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # pixel in the shape's own frame
    if kind == "square":
        side = radius / np.sqrt(2.0) * 1.25  # about the circle's area
        return (np.abs(u) <= side) & (np.abs(v) <= side)
    if kind == "triangle":  # apex up, base below: three half-planes
        h = 1.5 * radius
        inside = v <= h / 3
        inside &= np.sqrt(3.0) * u - v <= 2 * h / 3
        inside &= -np.sqrt(3.0) * u - v <= 2 * h / 3
        return inside
    raise ValueError(f"unknown shape {kind!r}; use one of {SHAPES}")


def draw(canvas: np.ndarray, kind: str, colour, y, x, radius, angle=0.0) -> np.ndarray:
    """Paint a shape onto a (C, H, W) canvas in place (C is 1 for grey, 3 for RGB)."""
    channels, height, width = canvas.shape
    inside = mask(kind, height, width, y, x, radius, angle)
    value = np.broadcast_to(np.asarray(colour, dtype=canvas.dtype), (channels,))
    canvas[:, inside] = value[:, None]
    return canvas
