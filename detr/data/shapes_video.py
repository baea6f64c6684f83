"""Synthetic 'shapes-video' clips with MOTChallenge ground truth, for the stream path.

Layout written by :func:`make_shapes_video`::

    out_dir/clip-001/video.mp4        H.264 (or MPEG-4 Part 2) at config.fps
    out_dir/clip-001/gt/gt.txt        MOTChallenge ground truth
    out_dir/clip-001/gt/labels.json   track id -> {category_id, name}
    out_dir/clip-001/seqinfo.ini      MOTChallenge sequence info
    ...

Content: the still dataset's shapes, textures and cluttered backgrounds
(``detr/data/shapes_draw.py``), moving at constant speed over a fixed background.
Some tracks stay in the frame (bouncing off the borders), others cross it: they
enter from one side after the clip has started and leave through the other, so
tracks are born and die mid-clip. Shapes are drawn in a fixed depth order, so
crossing paths occlude each other.

Ground truth, one row per visible object and frame:
``frame,id,x,y,w,h,1,1,visibility`` -- frame 1-based; the box is the tight box of
the object's VISIBLE pixels (the still dataset's convention, what the detector was
trained on), inside the frame; class 1 for every shape (MOTChallenge scores class
1 only, and 2/7/8/12 are its distractor classes, so shape categories cannot be the
class column: they are in labels.json); visibility = visible / drawn pixels.
Objects with fewer than ``min_pixels`` visible pixels have no row (fully hidden or
all but gone off the border).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detr.data.shapes_draw import TEXTURES, background, random_colour, shape_mask, texture
from detr.data.synthetic import DEFAULT_CATEGORIES
from runtime.atomic import atomic_write_text
from runtime.errors import InputError


@dataclass(frozen=True)
class ShapesVideoConfig:
    seed: int = 0  # same seed -> same clips (same ground truth; video bytes follow FFmpeg)
    num_clips: int = 3  # clips written
    num_frames: int = 40  # frames per clip
    height: int = 192  # frame size (pixels)
    width: int = 192
    fps: float = 10.0  # nominal frame rate of the videos
    min_tracks: int = 3  # objects per clip, drawn uniformly from min..max
    max_tracks: int = 5
    radius: tuple[int, int] = (12, 26)  # circumradius range (pixels)
    speed: tuple[float, float] = (1.5, 4.0)  # pixels per frame
    crossing_share: float = 0.4  # share of tracks that enter and leave instead of bouncing
    min_pixels: int = 24  # fewer visible pixels -> no ground-truth row
    categories: tuple[tuple[int, str], ...] = DEFAULT_CATEGORIES  # (category id, shape)

    def validate(self) -> None:
        if self.num_clips < 1 or self.num_frames < 2:
            raise InputError("shapes-video", "need >= 1 clip of >= 2 frames")
        if min(self.height, self.width) < 64:
            raise InputError("--image-size", "frames must be at least 64x64")
        if not 1 <= self.min_tracks <= self.max_tracks <= 50:
            raise InputError("shapes-video", "need 1 <= min_tracks <= max_tracks <= 50")
        if not 2 <= self.radius[0] <= self.radius[1] <= min(self.height, self.width) // 3:
            raise InputError("shapes-video", f"radius range {self.radius} does not fit")
        if self.fps <= 0:
            raise InputError("--fps", f"must be positive, got {self.fps}")


@dataclass
class _Track:
    track_id: int
    category_id: int
    name: str
    mask: np.ndarray  # bool [2r+1, 2r+1]
    patch: np.ndarray  # uint8 [2r+1, 2r+1, 3]
    start: int  # first frame (0-based) it exists
    pos: np.ndarray  # float [2] (y, x) centre at ``start``
    vel: np.ndarray  # float [2] pixels per frame
    bounce: bool

    def centre(self, t: int, h: int, w: int) -> np.ndarray | None:
        """(y, x) centre at frame ``t``, None before it starts."""
        if t < self.start:
            return None
        p = self.pos + self.vel * (t - self.start)
        if not self.bounce:
            return p
        r = self.mask.shape[0] // 2
        out = p.copy()
        for axis, side in ((0, h), (1, w)):
            span = side - 1 - 2 * r  # reflect inside [r, side - 1 - r]
            q = (p[axis] - r) % (2 * span)
            out[axis] = r + (q if q <= span else 2 * span - q)
        return out


def _make_tracks(config: ShapesVideoConfig, rng: np.random.Generator) -> list[_Track]:
    h, w, n = config.height, config.width, config.num_frames
    tracks = []
    for k in range(int(rng.integers(config.min_tracks, config.max_tracks + 1))):
        cat_id, name = config.categories[int(rng.integers(len(config.categories)))]
        r = int(rng.integers(config.radius[0], config.radius[1] + 1))
        mask = shape_mask(name, r, rng)
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        patch = texture(kind, 2 * r + 1, 2 * r + 1, random_colour(rng), rng)
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.sin(angle), np.cos(angle)])  # (y, x), unit
        if rng.random() < config.crossing_share:
            # Enters after the start from just outside the border, crosses the frame through
            # a random chord and leaves: twice the speed, so most leave before the end.
            speed = rng.uniform(config.speed[1], 2 * config.speed[1])
            start = int(rng.integers(0, max(1, n // 4)))
            normal = np.array([-direction[1], direction[0]])
            pos = (np.array([h / 2, w / 2]) - direction * (max(h, w) / 2 + r)
                   + normal * rng.uniform(-0.3, 0.3) * min(h, w))
            tracks.append(_Track(k + 1, cat_id, name, mask, patch, start, pos,
                                 speed * direction, False))
        else:
            speed = rng.uniform(*config.speed)
            pos = np.array([rng.uniform(r, h - 1 - r), rng.uniform(r, w - 1 - r)])
            tracks.append(_Track(k + 1, cat_id, name, mask, patch, 0, pos,
                                 speed * direction, True))
    return tracks


def render_frame(bg: np.ndarray, tracks: list[_Track], t: int, min_pixels: int
                 ) -> tuple[np.ndarray, list[tuple[int, list[float], float]]]:
    """Frame ``t``: (image uint8 [H, W, 3], rows ``(track_id, [x, y, w, h], visibility)``)."""
    h, w = bg.shape[:2]
    img = bg.copy()
    owner = np.zeros((h, w), dtype=np.int16)  # 0 = background, else track id on top
    for tr in tracks:  # list order = depth order: later tracks cover earlier ones
        c = tr.centre(t, h, w)
        if c is None:
            continue
        r = tr.mask.shape[0] // 2
        y0, x0 = round(float(c[0])) - r, round(float(c[1])) - r
        ys = slice(max(y0, 0), min(y0 + 2 * r + 1, h))
        xs = slice(max(x0, 0), min(x0 + 2 * r + 1, w))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        m = tr.mask[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        img[ys, xs][m] = tr.patch[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0][m]
        owner[ys, xs][m] = tr.track_id
    rows = []
    for tr in tracks:
        yy, xx = np.nonzero(owner == tr.track_id)
        if yy.size < min_pixels:
            continue
        box = [float(xx.min()), float(yy.min()), float(xx.max() - xx.min() + 1),
               float(yy.max() - yy.min() + 1)]
        rows.append((tr.track_id, box, yy.size / float(tr.mask.sum())))
    return img, rows


def write_clip(out: Path, config: ShapesVideoConfig, clip: int) -> dict[str, Any]:
    """Render and write clip ``clip`` (0-based) into ``out``; return its statistics."""
    from runtime.stream.writers import VideoWriter

    rng = np.random.default_rng([config.seed, clip])
    bg = background(config.height, config.width, rng)
    tracks = _make_tracks(config, rng)
    video = VideoWriter(out / "video.mp4", config.fps)
    lines, seen = [], set()
    try:
        for t in range(config.num_frames):
            img, rows = render_frame(bg, tracks, t, config.min_pixels)
            video.write(img, t)
            for tid, (x, y, bw, bh), vis in rows:
                lines.append(f"{t + 1},{tid},{x:.0f},{y:.0f},{bw:.0f},{bh:.0f},1,1,{vis:.3f}")
                seen.add(tid)
    finally:
        video.close()
    atomic_write_text(out / "gt" / "gt.txt", "\n".join(lines) + "\n")
    labels = {str(tr.track_id): {"category_id": tr.category_id, "name": tr.name}
              for tr in tracks if tr.track_id in seen}
    atomic_write_text(out / "gt" / "labels.json", json.dumps(labels, indent=1))
    atomic_write_text(out / "seqinfo.ini", (
        f"[Sequence]\nname={out.name}\nimDir=video.mp4\nframeRate={config.fps:g}\n"
        f"seqLength={config.num_frames}\nimWidth={config.width}\nimHeight={config.height}\n"
        "imExt=.mp4\n"))
    return {"clip": out.name, "tracks": len(seen), "rows": len(lines), "codec": video.codec}


def make_shapes_video(out_dir: str | Path, config: ShapesVideoConfig = ShapesVideoConfig(),
                      progress: bool = True) -> list[dict[str, Any]]:
    """Write ``config.num_clips`` clips (layout in the module docstring); return their stats."""
    from tqdm import tqdm

    config.validate()
    out = Path(out_dir)
    return [write_clip(out / f"clip-{c + 1:03d}", config, c)
            for c in tqdm(range(config.num_clips), desc="shapes-video", unit="clip",
                          disable=not progress)]
