"""The work of each stream stage, shared by the pipelined and the sequential runner.

A :class:`Chunk` (1..batch frames) travels through the stages and each fills in
its part: ``preprocess`` -> ``batch``; ``infer`` -> ``logits``/``boxes``;
``post`` (set decoding + tracking) -> ``dets``/``track_ids``; ``write`` draws,
encodes and records them. Preprocessing and set decoding are the runtime's own
(``Detector.prepare`` = ``runtime.preprocess`` or frame stacking for a fused
model; ``Detector.decode_batch`` = ``runtime.decode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.decode import Detections
from runtime.stream.sources import Frame, FrameSource
from runtime.stream.writers import JsonlWriter, MotWriter, VideoWriter, frame_record

if TYPE_CHECKING:
    from runtime.detector import Detector
    from runtime.preprocess import Batch
    from runtime.stream.config import StreamConfig
    from runtime.stream.summary import StreamSummary


@dataclass
class Chunk:
    """Frames processed together (one model call) and what the stages computed."""

    frames: list[Frame]
    batch: Batch | None = None
    logits: np.ndarray | None = None  # [B, Q, K+1]
    boxes: np.ndarray | None = None  # [B, Q, 4] normalised cxcywh
    dets: list[Detections] = field(default_factory=list)  # per frame, xyxy source pixels
    track_ids: list[np.ndarray | None] = field(default_factory=list)  # per frame, int64 [N]


@dataclass
class Outputs:
    """The open writers of a run (``None`` = not written)."""

    jsonl: JsonlWriter
    video: VideoWriter | None = None
    mot: MotWriter | None = None

    @classmethod
    def open(cls, config: StreamConfig, fps: float) -> Outputs:
        out = config.out_dir
        jsonl = JsonlWriter(out / "detections.jsonl")
        try:
            video = VideoWriter(out / "annotated.mp4", fps, config.video_codec,
                                config.video_preset) if config.video else None
            mot = MotWriter(out / "tracks.txt") if config.track else None
        except BaseException:
            jsonl.close()
            raise
        return cls(jsonl, video, mot)

    def close(self, summary: StreamSummary) -> None:
        """Finalize every file (also after an interrupt), recording them in ``summary``."""
        errors: list[BaseException] = []
        for kind, writer in (("detections", self.jsonl), ("video", self.video),
                             ("tracks", self.mot)):
            if writer is None:
                continue
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001  # close the others, then re-raise the first
                errors.append(exc)
                continue
            if writer is not self.video or self.video.frames:
                summary.outputs[kind] = str(writer.path)
        if self.video is not None and self.video.frames:
            summary.video_codec = self.video.codec
        if errors:
            raise errors[0]


class StageWork:
    """preprocess / infer / post / write for one run (each call takes and returns a Chunk)."""

    def __init__(self, config: StreamConfig, detector: Detector, source: FrameSource,
                 outputs: Outputs) -> None:
        self.config, self.detector, self.outputs = config, detector, outputs
        self.tracker: Any = None
        threshold = config.threshold
        if config.track:
            from runtime.stream.tracking import Tracker

            self.tracker = Tracker(config.tracker, source.fps)
            threshold = config.tracker.low_threshold  # the tracker sees the low-score slots
        self.decode_options = {"score_threshold": threshold, "top_k": config.top_k,
                               "second_best": config.second_best}
        self.progress = _progress_bar(source)

    def preprocess(self, chunk: Chunk) -> Chunk:
        chunk.batch = self.detector.prepare([f.rgb for f in chunk.frames])
        return chunk

    def infer(self, chunk: Chunk) -> Chunk:
        assert chunk.batch is not None
        chunk.logits, chunk.boxes = self.detector.infer_batch(chunk.batch)
        return chunk

    def post(self, chunk: Chunk) -> Chunk:
        """Set decoding, then tracking (frames in order: the tracker is sequential)."""
        assert chunk.batch is not None and chunk.logits is not None and chunk.boxes is not None
        dets = self.detector.decode_batch(chunk.batch, chunk.logits, chunk.boxes,
                                          **self.decode_options)
        chunk.batch = chunk.logits = chunk.boxes = None  # free the float canvases early
        for det in dets:
            if self.tracker is not None:
                det, ids = self.tracker.update(det)
                chunk.dets.append(det)
                chunk.track_ids.append(ids)
            else:
                chunk.dets.append(det)
                chunk.track_ids.append(None)
        return chunk

    def write(self, chunk: Chunk) -> Chunk:
        from PIL import Image

        from runtime.draw import draw_detections

        for frame, det, ids in zip(chunk.frames, chunk.dets, chunk.track_ids):
            self.outputs.jsonl.write(frame_record(frame.index, frame.timestamp, det,
                                                  frame.rgb.shape[:2], ids, frame.name))
            if self.outputs.mot is not None and ids is not None:
                self.outputs.mot.write(frame.index, det, ids)
            if self.outputs.video is not None:
                shown = _with_track_names(det, ids)
                picture = draw_detections(Image.fromarray(frame.rgb), shown)
                self.outputs.video.write(np.asarray(picture), frame.index)
            if self.progress is not None:
                self.progress.update(1)
        chunk.frames = [Frame(f.index, f.timestamp, _EMPTY, f.name, f.decoded_at)
                        for f in chunk.frames]  # drop the pixels, keep the timing
        return chunk

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


_EMPTY = np.zeros((0, 0, 3), np.uint8)


def _with_track_names(det: Detections, ids: np.ndarray | None) -> Detections:
    """``det`` labelled "<class> #<track id>" for drawing (unchanged without tracking)."""
    if ids is None or not len(det):
        return det
    names = det.class_names or [str(int(c)) for c in det.labels]
    shown = Detections(det.scores, det.labels, det.boxes, category_ids=det.category_ids)
    shown.class_names = [f"{n} #{int(t)}" for n, t in zip(names, ids)]
    return shown


def _progress_bar(source: FrameSource) -> Any:
    """tqdm over the frames of a file (length known); a counter for live sources."""
    from tqdm import tqdm

    return tqdm(total=source.num_frames, unit="frame", desc="stream", disable=None)
