"""Frame sources: video files, network streams, V4L2 cameras and image folders.

Every source yields :class:`Frame` objects (``rgb`` uint8 ``[H, W, 3]``) in
order. Video is decoded with PyAV (FFmpeg), imported when a video source is
opened so image folders work without the ``video`` extra.

Network URLs and cameras reconnect after a drop (live or not): up to
``SourceConfig.reconnect_attempts`` reopen attempts in a row, ``reconnect_delay_s``
apart; then :class:`StreamDroppedError`. A clean end of stream is the end, not a
drop (an HTTP-served file ends that way).
"""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BackendUnavailableError, DataError, InputError

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://",
                   "tcp://", "srt://")
VIDEO_EXTRA = "pip install 'detr-edge[video]'"


class StreamDroppedError(InputError):
    """A live source stopped delivering frames and could not be reopened."""


@dataclass
class Frame:
    """One decoded frame.

    index: position in the source, counting frames later dropped as stale.
    timestamp: seconds; the frame's presentation time for files, arrival time since
        the start for live sources (their clocks restart on reconnect).
    rgb: uint8 [H, W, 3].
    name: file name for image sources, "" for video.
    decoded_at: ``time.perf_counter()`` when decoding finished (latency accounting).
    """

    index: int
    timestamp: float
    rgb: np.ndarray
    name: str = ""
    decoded_at: float = 0.0


@dataclass(frozen=True)
class SourceConfig:
    spec: str  # file, folder, glob, URL (rtsp/http/...) or /dev/videoN
    live: bool | None = None  # None = auto: URLs and cameras are live, files are not
    reconnect_attempts: int = 3  # live sources: reopen attempts in a row before giving up
    reconnect_delay_s: float = 1.0  # pause between reopen attempts
    timeout_s: float = 10.0  # open/read timeout of network sources
    image_fps: float = 10.0  # nominal rate of image folders (timestamps, output video)

    def validate(self) -> None:
        if self.reconnect_attempts < 0:
            raise InputError("--reconnect", f"must be >= 0, got {self.reconnect_attempts}")
        if self.timeout_s <= 0 or self.image_fps <= 0:
            raise InputError("--source", "timeout and image rate must be positive")


def import_av() -> Any:
    """PyAV, or a one-line error naming the extra that provides it."""
    try:
        import av
    except ImportError as exc:
        raise BackendUnavailableError(
            f"video sources and outputs need PyAV ({VIDEO_EXTRA})") from exc
    return av


def source_kind(spec: str) -> str:
    """'network' | 'camera' | 'images' | 'video' for a ``--source`` value."""
    if spec.lower().startswith(NETWORK_SCHEMES):
        return "network"
    if spec.startswith("/dev/video"):
        return "camera"
    path = Path(spec)
    if path.is_dir() or glob.has_magic(spec):
        return "images"
    if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                                  ".tif", ".tiff"):
        return "images"
    if not path.exists():
        raise InputError(spec, "no such file, folder, camera or URL")
    return "video"


class FrameSource:
    """Base of the sources: ``frames()`` yields frames until the end or ``stop()``."""

    live: bool = False
    fps: float = 25.0  # nominal frame rate (output video, tracker)
    num_frames: int | None = None  # known length (progress bar), None for live streams
    description: str = ""

    def __init__(self) -> None:
        self._stopped = False

    def stop(self) -> None:
        """Ask ``frames()`` to end after the current frame (thread-safe flag)."""
        self._stopped = True

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder / connection (idempotent)."""


class ImageSource(FrameSource):
    """Image files from a folder (recursive), a glob or a file, in sorted order."""

    def __init__(self, spec: str, fps: float) -> None:
        super().__init__()
        from runtime.predict import collect_images

        if glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise InputError(spec, "the pattern matches no files")
            self.files = collect_images(matches)
        else:
            self.files = collect_images([spec])
        self.fps = fps
        self.num_frames = len(self.files)
        self.description = f"{len(self.files)} images from {spec}"

    def frames(self) -> Iterator[Frame]:
        from runtime.image_io import load_image

        for i, path in enumerate(self.files):
            if self._stopped:
                return
            rgb = np.asarray(load_image(path))
            yield Frame(i, i / self.fps, rgb, str(path), time.perf_counter())


class VideoSource(FrameSource):
    """A video file, network stream or V4L2 camera decoded with PyAV (first video stream)."""

    def __init__(self, config: SourceConfig, kind: str) -> None:
        super().__init__()
        self.config = config
        self.kind = kind
        self.live = (kind != "video") if config.live is None else config.live
        self.av = import_av()
        self.reconnects = 0
        self._container = self._open()
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.num_frames = (stream.frames or None) if not self.live else None
        self.description = (f"{kind} {config.spec} ({stream.codec_context.name} "
                            f"{stream.codec_context.width}x{stream.codec_context.height} "
                            f"@ {self.fps:.3g} fps{', live' if self.live else ''})")

    def _open(self) -> Any:
        av, spec = self.av, self.config.spec
        options: dict[str, str] = {}
        fmt = None
        if self.kind == "camera":
            fmt = "v4l2"
        if spec.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # UDP loses packets behind NAT and on Wi-Fi
        try:
            container = av.open(spec, format=fmt, options=options,
                                timeout=(self.config.timeout_s, self.config.timeout_s))
        except (av.FFmpegError, OSError) as exc:
            raise InputError(spec, f"cannot open the video source ({_short(exc)})") from exc
        if not container.streams.video:
            container.close()
            raise DataError(spec, "has no video stream")
        container.streams.video[0].thread_type = "AUTO"  # frame + slice threads in FFmpeg
        return container

    def frames(self) -> Iterator[Frame]:
        index, start = 0, time.perf_counter()
        while not self._stopped:
            try:
                for frame in self._container.decode(video=0):
                    if self._stopped:
                        break
                    rgb = frame.to_ndarray(format="rgb24")
                    now = time.perf_counter()
                    ts = now - start if self.live else float(frame.time or index / self.fps)
                    yield Frame(index, ts, rgb, "", now)
                    index += 1
                return  # clean end of stream
            except (self.av.FFmpegError, OSError) as exc:
                if self.kind == "video":  # a file does not come back: no reconnect
                    raise DataError(self.config.spec, f"decoding failed at frame {index} "
                                    f"({_short(exc)})") from exc
                self._reconnect(exc)

    def _reconnect(self, cause: BaseException) -> None:
        """Reopen a dropped live source, or raise StreamDroppedError after the limit."""
        self.close()
        last: BaseException = cause
        for _ in range(self.config.reconnect_attempts):
            time.sleep(self.config.reconnect_delay_s)
            try:
                self._container = self._open()
                self.reconnects += 1
                return
            except InputError as exc:
                last = exc
        why = last.problem if isinstance(last, InputError) else _short(last)
        raise StreamDroppedError(self.config.spec, f"stream dropped, then {why}; "
                                 f"{self.config.reconnect_attempts} reconnect attempts failed")

    def close(self) -> None:
        container = self.__dict__.pop("_container", None)
        if container is not None:
            container.close()


def open_source(config: SourceConfig) -> FrameSource:
    """The source for ``config.spec`` (raises ``InputError`` if it cannot be opened)."""
    config.validate()
    kind = source_kind(config.spec)
    if kind == "images":
        return ImageSource(config.spec, config.image_fps)
    return VideoSource(config, kind)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
