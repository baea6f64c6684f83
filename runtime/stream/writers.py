"""Stream outputs: per-frame JSON Lines, MOTChallenge tracks and an annotated video.

Each output is written through ``runtime.atomic.atomic_write`` held open for the
whole run: frames go to a temporary file next to the destination, and ``close()``
flushes, fsyncs and renames it. A run that ends early (Ctrl-C, SIGTERM, a dropped
stream) still closes its writers, so the files are complete (a playable video with
its index written, whole JSON lines); a crash leaves the previous files untouched.
"""

from __future__ import annotations

import contextlib
import json
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from runtime.atomic import atomic_write
from runtime.decode import Detections

# Encoders tried in order for an annotated video: H.264 first (plays everywhere), then
# MPEG-4 Part 2, which every FFmpeg build has.
VIDEO_CODECS = ("libx264", "h264", "mpeg4")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")


class _AtomicFile:
    """A file written through ``atomic_write`` that stays open until ``close()``."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self.fh: IO[Any] = self._stack.enter_context(atomic_write(path, mode))

    def close(self) -> None:
        self._stack.close()  # flush + fsync + rename


class JsonlWriter:
    """One JSON object per frame (see :func:`frame_record`); complete and renamed at close."""

    def __init__(self, path: Path) -> None:
        self._file = _AtomicFile(path, "w")
        self.path = path
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        self._file.close()


def frame_record(index: int, timestamp: float, det: Detections, size: tuple[int, int],
                 track_ids: np.ndarray | None, name: str = "") -> dict[str, Any]:
    """The JSON Lines entry of one frame.

    boxes: xyxy pixels of the source frame (2 decimals); classes: contiguous model
    labels; category_ids: dataset ids; track_ids: ByteTrack ids (null without
    ``--track``). size: (height, width) of the frame.
    """
    record: dict[str, Any] = {
        "frame": index, "timestamp": round(float(timestamp), 4),
        "height": int(size[0]), "width": int(size[1]),
        "boxes": [[round(float(v), 2) for v in box] for box in det.boxes],
        "scores": [round(float(s), 4) for s in det.scores],
        "classes": [int(c) for c in det.labels],
        "class_names": list(det.class_names),
        "category_ids": [int(c) for c in det.category_ids],
        "track_ids": None if track_ids is None else [int(t) for t in track_ids],
    }
    if name:
        record["file"] = name
    return record


class MotWriter:
    """MOTChallenge results: ``frame,id,x,y,w,h,score,-1,-1,-1`` (frame 1-based)."""

    def __init__(self, path: Path) -> None:
        self._file = _AtomicFile(path, "w")
        self.path = path

    def write(self, index: int, det: Detections, track_ids: np.ndarray) -> None:
        for box, score, tid in zip(det.boxes, det.scores, track_ids):
            if tid < 0:
                continue  # not (yet) a confirmed track
            x0, y0, x1, y1 = (float(v) for v in box)
            self._file.fh.write(f"{index + 1},{int(tid)},{x0:.2f},{y0:.2f},{x1 - x0:.2f},"
                                f"{y1 - y0:.2f},{float(score):.4f},-1,-1,-1\n")

    def close(self) -> None:
        self._file.close()


class VideoWriter:
    """Annotated frames -> MP4 (H.264 when the encoder exists, else MPEG-4 Part 2).

    The size is fixed by the first frame (odd sides padded by one pixel: yuv420p
    needs even sides); later frames of another size (image folders) are resized to
    it. ``pts`` are source frame indices at the nominal rate, so frames dropped by a live
    source leave the right gaps in time. H.264 uses x264's ``ultrafast`` preset by
    default: at 720p on a 2-core CPU it takes ~12 ms of CPU per frame against ~23 ms for
    ``veryfast`` (files ~2.5x larger), CPU the model would otherwise lose (README).
    """

    def __init__(self, path: Path, fps: float, codec: str = "auto",
                 preset: str = "ultrafast") -> None:
        from runtime.stream.sources import import_av

        self.av = import_av()
        self.path = path
        self.rate = Fraction(fps).limit_denominator(1001)
        self.codec_wanted = codec
        self.preset = preset  # x264 preset (H.264 only)
        self.codec = ""  # chosen at the first frame
        self.frames = 0
        self._file: _AtomicFile | None = None
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] = (0, 0)  # (h, w) of the encoded picture
        self._last_pts = -1

    def _open(self, height: int, width: int) -> None:
        self._size = (height + height % 2, width + width % 2)
        self._file = _AtomicFile(self.path, "wb")
        self._container = self.av.open(self._file.fh, mode="w", format="mp4")
        candidates = VIDEO_CODECS if self.codec_wanted == "auto" else (self.codec_wanted,)
        for name in candidates:
            try:
                stream = self._container.add_stream(name, rate=self.rate)
            except (self.av.FFmpegError, ValueError):
                continue
            self.codec = name
            break
        else:
            from runtime.errors import BackendUnavailableError

            raise BackendUnavailableError(f"no video encoder among {', '.join(candidates)} in "
                                          "this FFmpeg build")
        stream.height, stream.width = self._size
        stream.pix_fmt = "yuv420p"
        if self.codec in ("libx264", "h264"):
            stream.options = {"preset": self.preset, "crf": "23"}
        self._stream = stream

    def write(self, rgb: np.ndarray, index: int) -> None:
        """rgb uint8 [H, W, 3] of source frame ``index`` (increasing)."""
        if self._container is None:
            self._open(rgb.shape[0], rgb.shape[1])
        rgb = self._fit(rgb)
        frame = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = max(index, self._last_pts + 1)
        self._last_pts = frame.pts
        frame.time_base = 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _fit(self, rgb: np.ndarray) -> np.ndarray:
        h, w = self._size
        if rgb.shape[:2] == (h, w):
            return np.ascontiguousarray(rgb)
        if rgb.shape[0] in (h, h - 1) and rgb.shape[1] in (w, w - 1):
            return np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)),
                          mode="edge")
        from PIL import Image

        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))

    def close(self) -> None:
        """Flush the encoder, write the MP4 index, rename into place (idempotent)."""
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
        if self._file is not None:
            self._file.close()
            self._file = None
