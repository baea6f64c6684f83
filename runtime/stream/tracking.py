"""Persistent ids with ByteTrack (Zhang et al., 2022) from the ``trackers`` package.

How DETR's scores feed ByteTrack. DETR predicts a set: one query per object, no
duplicate boxes, so there is no NMS to undo and every decoded slot can go to the
tracker. ByteTrack splits detections by score:

- ``score >= high_threshold``: first association with the predicted tracks; an
  unmatched one starts a new track if ``score >= activation_threshold``;
- ``low_threshold <= score < high_threshold``: second association only, with the
  tracks left unmatched (this recovers occluded objects whose DETR score sagged);
- ``score < low_threshold``: never reaches the tracker (set decoding drops them).

So with ``--track`` the set decoding threshold is ``low_threshold`` (not
``--threshold``), and what is written are the tracked boxes: detections that
belong to a confirmed track (``min_frames`` consecutive matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.decode import Detections
from runtime.errors import BackendUnavailableError, InputError


@dataclass(frozen=True)
class TrackerConfig:
    low_threshold: float = 0.1  # DETR slots above this reach the tracker (second association)
    high_threshold: float = 0.5  # first association (ByteTrack's high-confidence split)
    activation_threshold: float = 0.6  # an unmatched detection above this starts a track
    min_iou: float = 0.1  # IoU below which a detection and a predicted track never match
    lost_frames: int = 30  # a lost track is kept this many frames (at 30 fps) for re-id
    min_frames: int = 2  # consecutive matches before a track gets an id

    def validate(self) -> None:
        if not 0.0 <= self.low_threshold <= self.high_threshold <= 1.0:
            raise InputError("--track-thresholds", "need 0 <= low <= high <= 1, got "
                             f"{self.low_threshold}, {self.high_threshold}")
        if self.lost_frames < 0 or self.min_frames < 1:
            raise InputError("--track-lost-frames", "lost frames >= 0 and min frames >= 1")


class Tracker:
    """ByteTrack over ``runtime.decode.Detections`` (xyxy pixels), one frame at a time."""

    def __init__(self, config: TrackerConfig, fps: float) -> None:
        config.validate()
        try:
            from trackers import ByteTrackTracker
        except ImportError as exc:
            raise BackendUnavailableError("--track needs the 'trackers' package "
                                          "(pip install 'detr-edge[video]')") from exc
        import supervision as sv

        self._sv = sv
        self.config = config
        self._tracker: Any = ByteTrackTracker(
            lost_track_buffer=config.lost_frames, frame_rate=max(fps, 1e-3),
            track_activation_threshold=config.activation_threshold,
            minimum_consecutive_frames=config.min_frames,
            minimum_iou_threshold=config.min_iou,
            high_conf_det_threshold=config.high_threshold)

    def update(self, det: Detections) -> tuple[Detections, np.ndarray]:
        """Detections of one frame -> (the confirmed-track detections, their ids int64 [N])."""
        sv = self._sv
        boxes = det.boxes.astype(np.float64).reshape(-1, 4)
        keep = det.scores >= self.config.low_threshold
        idx = np.flatnonzero(keep)
        given = sv.Detections(xyxy=boxes[idx], confidence=det.scores[idx].astype(np.float64),
                              class_id=det.labels[idx].astype(int),
                              data={"index": idx.astype(np.int64)})
        out = self._tracker.update(given)
        ids = np.asarray(out.tracker_id if out.tracker_id is not None else [], dtype=np.int64)
        src = np.asarray(out.data.get("index", []), dtype=np.int64)
        confirmed = ids >= 0
        return select(det, src[confirmed]), ids[confirmed]


def select(det: Detections, idx: np.ndarray) -> Detections:
    """The detections ``idx`` of ``det`` (names and category ids follow)."""
    names = [det.class_names[i] for i in idx] if det.class_names else []
    cats = det.category_ids[idx] if len(det.category_ids) else det.category_ids
    out = Detections(scores=det.scores[idx], labels=det.labels[idx], boxes=det.boxes[idx])
    out.class_names = names
    out.category_ids = cats
    return out
