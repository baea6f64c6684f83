"""Drawing primitives of the synthetic 'shapes' dataset: shape masks, textures,
cluttered backgrounds. numpy + pillow only; every random choice comes from the
``numpy.random.Generator`` passed in, so an image is a pure function of its seed.

Arrays are ``uint8 [H, W, 3]`` RGB images and ``bool [h, w]`` masks.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# Shape names the generator can draw; a dataset's categories must use these names.
SHAPE_NAMES = ("circle", "square", "triangle", "star", "ellipse", "cross")
TEXTURES = ("solid", "stripes", "checkers", "noise")


def _polygon(name: str, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Vertices of shape ``name`` with circumradius ``r`` around (0, 0), randomly rotated."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    if name == "square":
        angles = [theta + k * math.pi / 2 for k in range(4)]
        radii = [r] * 4
    elif name == "triangle":
        angles = [theta + k * 2 * math.pi / 3 for k in range(3)]
        radii = [r] * 3
    elif name == "star":
        # 5 outer tips alternating with inner vertices at 0.4 r: unmistakably a star.
        angles = [theta + k * math.pi / 5 for k in range(10)]
        radii = [r if k % 2 == 0 else 0.4 * r for k in range(10)]
    elif name == "ellipse":
        # Aspect ratio 0.35..0.65 so an ellipse never looks like a circle.
        b = r * rng.uniform(0.35, 0.65)
        pts = []
        for k in range(48):
            t = k * 2 * math.pi / 48
            x, y = r * math.cos(t), b * math.sin(t)
            pts.append((x * math.cos(theta) - y * math.sin(theta),
                        x * math.sin(theta) + y * math.cos(theta)))
        return pts
    elif name == "cross":
        a = r / math.sqrt(1 + (1 / 3) ** 2)  # arm half-length so tips sit on the circumcircle
        w = a / 3  # arm half-width
        base = [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a),
                (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
        c, s = math.cos(theta), math.sin(theta)
        return [(x * c - y * s, x * s + y * c) for x, y in base]
    else:
        raise ValueError(f"unknown shape {name!r}; known: {SHAPE_NAMES}")
    return [(rad * math.cos(a), rad * math.sin(a)) for a, rad in zip(angles, radii)]


def shape_mask(name: str, r: int, rng: np.random.Generator) -> np.ndarray:
    """Binary mask ``bool [2r+1, 2r+1]`` of shape ``name`` centred in the square."""
    size = 2 * r + 1
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse((0, 0, size - 1, size - 1), fill=255)
    else:
        pts = [(x + r, y + r) for x, y in _polygon(name, float(r), rng)]
        draw.polygon(pts, fill=255)
    return np.asarray(canvas) > 127


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated-ish RGB colour, ``float [3]`` in 0..255."""
    return rng.uniform(0, 255, size=3)


def texture(kind: str, h: int, w: int, colour: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Texture patch ``uint8 [h, w, 3]`` around base ``colour``.

    solid: flat colour; stripes: two colours in bands at a random angle;
    checkers: two colours in squares; noise: per-pixel jitter around the colour.
    """
    if kind == "solid":
        patch = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    elif kind in ("stripes", "checkers"):
        other = random_colour(rng)
        period = float(rng.uniform(3, 10))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == "stripes":
            ang = rng.uniform(0, math.pi)
            phase = (xx * math.cos(ang) + yy * math.sin(ang)) / period
            sel = (np.floor(phase) % 2).astype(bool)
        else:
            sel = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
        patch = np.where(sel[..., None], other, colour).astype(np.float32)
    elif kind == "noise":
        jitter = rng.normal(0.0, 35.0, size=(h, w, 3))
        patch = (colour + jitter).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return np.clip(patch, 0, 255).astype(np.uint8)


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Cluttered background ``uint8 [h, w, 3]``: a linear colour gradient, soft
    colour blobs and random lines/arcs. None of it is an object (no annotation);
    it is there so the model must learn shape, not "anything not flat"."""
    c0, c1 = random_colour(rng), random_colour(rng)
    ang = rng.uniform(0, 2 * math.pi)
    # t = x cos + y sin is separable: an outer sum of two 1-D ramps (float32 for speed).
    t = (np.arange(w, dtype=np.float32)[None, :] * np.float32(math.cos(ang))
         + np.arange(h, dtype=np.float32)[:, None] * np.float32(math.sin(ang)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c0f, c1f = c0.astype(np.float32), c1.astype(np.float32)
    img = c0f + (c1f - c0f) * t[..., None]  # [h, w, 3]
    # Blobs: a coarse random colour field upsampled smoothly, blended in.
    coarse = rng.uniform(0, 255, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
    blobs = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    img = np.float32(0.65) * img + np.float32(0.35) * np.asarray(blobs, dtype=np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 9))):
        col = tuple(int(v) for v in random_colour(rng))
        x0, x1 = rng.uniform(-0.2 * w, 1.2 * w, size=2)
        y0, y1 = rng.uniform(-0.2 * h, 1.2 * h, size=2)
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=col, width=int(rng.integers(1, 4)))
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2)
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(30, 200)), fill=col,
                     width=int(rng.integers(1, 3)))
    return np.asarray(pil).copy()
