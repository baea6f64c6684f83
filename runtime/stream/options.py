"""``detr-edge predict --source ...`` options: the stream arguments and their config."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.stream.config import StreamConfig
from runtime.stream.tracking import TrackerConfig


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("streams (--source; needs the 'video' extra for video)")
    g.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="latest-frame policy: drop stale frames instead of queueing them "
                   "(default: on for URLs and cameras, off for files)")
    g.add_argument("--reconnect", type=int, default=3, metavar="N",
                   help="live sources: reopen attempts after a drop before giving up (default 3)")
    g.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="stop after N decoded frames")
    g.add_argument("--no-video", action="store_true", help="skip the annotated video")
    g.add_argument("--codec", default="auto", metavar="NAME",
                   help="video encoder (default auto: H.264 if available, else mpeg4)")
    g.add_argument("--video-preset", default="ultrafast", metavar="NAME",
                   help="x264 preset of the annotated video (default ultrafast: least CPU taken "
                   "from the model; veryfast etc. give smaller files)")
    g.add_argument("--sequential", action="store_true",
                   help="one frame at a time in one thread (baseline for the pipelined mode)")
    g.add_argument("--track", action="store_true",
                   help="ByteTrack ids (tracks.txt in MOTChallenge format); the tracker sees "
                   "every slot above --track-low, not --threshold")
    g.add_argument("--track-low", type=float, default=0.1,
                   help="lowest DETR score given to ByteTrack (second association; default 0.1)")
    g.add_argument("--track-high", type=float, default=0.5,
                   help="ByteTrack's high-confidence split (default 0.5)")
    g.add_argument("--track-activation", type=float, default=0.6,
                   help="score that starts a new track (default 0.6)")
    g.add_argument("--gt", type=Path, default=None, metavar="FILE",
                   help="MOTChallenge gt.txt: add MOTA / IDF1 of the tracks to the summary")


def stream_config(args: argparse.Namespace) -> StreamConfig:
    """The typed StreamConfig of the parsed ``predict --source`` arguments."""
    tracker = TrackerConfig(low_threshold=args.track_low, high_threshold=args.track_high,
                            activation_threshold=args.track_activation)
    return StreamConfig(model=args.model, source=args.source, out_dir=args.out,
                        threshold=args.threshold, backend=args.backend,
                        providers=args.providers, top_k=args.top_k,
                        second_best=args.second_best, batch_size=args.batch_size,
                        live=args.live, reconnect_attempts=args.reconnect,
                        max_frames=args.max_frames, video=not (args.no_video or args.no_draw),
                        video_codec=args.codec, video_preset=args.video_preset,
                        track=args.track, tracker=tracker, gt=args.gt,
                        pipelined=not args.sequential)
