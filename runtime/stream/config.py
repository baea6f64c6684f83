"""What ``run_stream`` (``runtime.stream.pipeline``) is asked to do: the typed config of
``detr-edge predict --source`` (built by ``runtime.stream.options.stream_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import InputError
from runtime.stream.tracking import TrackerConfig
from runtime.stream.writers import X264_PRESETS


@dataclass(frozen=True)
class StreamConfig:
    model: Path  # ONNX model or detr-edge engine file
    source: str  # video file, URL, /dev/videoN, image folder or glob
    out_dir: Path  # detections.jsonl, annotated.mp4, tracks.txt, summary.json
    threshold: float = 0.5  # minimum score written (without --track)
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    providers: list[str] | None = None  # ONNX Runtime providers; None = best available
    top_k: int | None = None  # at most this many detections per frame
    second_best: bool = False  # keep no-object slots with their best real class
    batch_size: int | None = None  # frames per call for dynamic-batch models
    live: bool | None = None  # latest-frame policy; None = auto (URLs and cameras)
    reconnect_attempts: int = 3  # live sources: reopen attempts in a row after a drop
    reconnect_delay_s: float = 1.0  # pause between them
    queue_size: int = 4  # frames/batches waiting between two stages (files)
    max_frames: int | None = None  # stop after this many decoded frames
    video: bool = True  # write the annotated video
    video_codec: str = "auto"  # auto = H.264 if the encoder exists, else MPEG-4 Part 2
    video_preset: str = "ultrafast"  # x264 preset: the encoder competes with the model for CPU
    track: bool = False  # ByteTrack ids + tracks.txt (MOTChallenge)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    gt: Path | None = None  # MOTChallenge gt.txt: evaluate the tracks (MOTA, IDF1)
    pipelined: bool = True  # False = one frame at a time in one thread (the baseline)
    image_fps: float = 10.0  # nominal rate of image-folder sources
    # ONNX Runtime's idle intra-op threads busy-wait by default; in a stream they would
    # take the cores decoding, preprocessing and encoding need (README, stream figures).
    ort_spinning: bool = False
    ort_threads: int | None = None  # intra-op threads; None = ORT's default (cores)

    def validate(self) -> None:
        if self.queue_size < 1:
            raise InputError("--queue-size", f"must be >= 1, got {self.queue_size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError("--max-frames", f"must be >= 1, got {self.max_frames}")
        if self.video_preset not in X264_PRESETS:
            raise InputError("--video-preset", f"unknown x264 preset {self.video_preset!r} "
                             f"(one of {', '.join(X264_PRESETS)})")
        if self.gt is not None and not self.track:
            raise InputError("--gt", "evaluating against ground truth needs --track")
        self.tracker.validate()
