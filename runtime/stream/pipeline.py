"""Pipelined stream detection: decode -> preprocess -> inference -> set decoding
(+ tracking) -> write, each stage a thread joined by bounded queues.

Why threads: every heavy step (FFmpeg decoding, PIL resize, numpy normalisation,
ONNX Runtime / TensorRT inference, H.264 encoding) releases the GIL, so the stages
overlap and the throughput approaches that of the slowest stage (the model) instead
of the sum of all of them. The queues are bounded, so memory stays flat and a slow
model slows decoding down rather than buffering the whole video.

Frame policy. Files: every frame is processed, in order. Live sources (URLs,
cameras): "latest frame" -- when the model falls behind, the oldest waiting frame is
dropped (and counted) so latency stays bounded instead of growing without limit.
Dynamic-batch models get up to ``batch_size`` frames per call (files wait for a full
batch; live sources take what is waiting).

Ending. Ctrl-C / SIGTERM (``runtime.errors.Terminated``) stop the source; the frames
in flight go through, the writers close (playable video, complete JSON Lines), the
summary is written, then the interrupt propagates (exit 130 / 143 in the CLI). A
live stream that drops beyond the reconnect limit ends the same way, then raises
``StreamDroppedError``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime.engine_file import is_engine_file
from runtime.errors import InputError, Terminated
from runtime.stream.config import StreamConfig
from runtime.stream.sources import Frame, FrameSource, SourceConfig, open_source
from runtime.stream.stages import Chunk, Outputs, StageWork
from runtime.stream.summary import StageTimes, StreamSummary, evaluate_tracks

_END = object()  # end-of-stream marker passed down the queues
_POLL_S = 0.05  # queue wait granularity: how fast a stage notices a stop


def run_stream(config: StreamConfig) -> StreamSummary:
    """Detect (and track) objects in every frame of ``config.source``; write the outputs
    and ``summary.json`` into ``config.out_dir`` and return the summary. Ctrl-C and
    SIGTERM end the run cleanly (files finalized) and are re-raised afterwards."""
    from runtime.detector import Detector

    config.validate()
    source = open_source(SourceConfig(config.source, config.live, config.reconnect_attempts,
                                      config.reconnect_delay_s, image_fps=config.image_fps))
    try:
        detector = Detector(config.model, backend=config.backend, providers=config.providers,
                            batch_size=config.batch_size, backend_options=_backend_options(config))
    except BaseException:
        source.close()
        raise
    summary = StreamSummary(source=source.description,
                            mode="pipelined" if config.pipelined else "sequential",
                            batch_size=detector.batch_size if config.pipelined else 1)
    outputs = Outputs.open(config, source.fps)
    work = StageWork(config, detector, source, outputs)
    runner = _Runner(work, source, config, summary)
    stopped: BaseException | None = None
    try:
        runner.run()
    except KeyboardInterrupt as exc:  # Terminated too
        stopped = exc
        summary.interrupted = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    finally:
        work.close()
        # Never close what a thread still uses: a decoder blocked in a network read
        # (ends at its own timeout), stages after a second Ctrl-C.
        if not runner.alive(decoder=True):
            source.close()
        if not runner.alive(decoder=False):
            outputs.close(summary)
            detector.close()
    summary.reconnects = getattr(source, "reconnects", 0)
    if runner.error is not None:
        summary.interrupted = str(runner.error)
    summary.stages = {name: t.percentiles() for name, t in runner.times.items()}
    if config.gt is not None and outputs.mot is not None:
        summary.tracking = evaluate_tracks(config.gt, outputs.mot.path)
    summary.write(config.out_dir / "summary.json")
    if stopped is not None:
        raise stopped
    if runner.error is not None:
        raise runner.error
    return summary


def _backend_options(config: StreamConfig) -> dict[str, Any]:
    """ONNX Runtime session settings of the stream (none for a TensorRT engine)."""
    if config.backend == "tensorrt" or (config.backend == "auto" and is_engine_file(config.model)):
        return {}
    return {"spinning": config.ort_spinning, "intra_op_threads": config.ort_threads}


class _Runner:
    """Runs the stages of ``work`` in threads (or in one loop when not pipelined)."""

    STAGES = ("decode", "preprocess", "inference", "set_decode", "write")

    def __init__(self, work: StageWork, source: FrameSource, config: StreamConfig,
                 summary: StreamSummary) -> None:
        self.work, self.source, self.config, self.summary = work, source, config, summary
        self.times = {name: StageTimes() for name in (*self.STAGES, "end_to_end")}
        self.stop = threading.Event()  # stop reading the source (interrupt, error)
        self.abort = threading.Event()  # a stage failed: everyone stops at once
        self.error: BaseException | None = None
        self.batch = work.detector.batch_size if config.pipelined else 1
        self.threads: list[threading.Thread] = []

    def alive(self, decoder: bool) -> bool:
        """Whether the decode thread (``decoder``) or a later stage is still running."""
        threads = self.threads[:1] if decoder else self.threads[1:]
        return any(t.is_alive() for t in threads)

    # ---- the two modes -----------------------------------------------------------------

    def run(self) -> None:
        start = time.perf_counter()
        try:
            if self.config.pipelined:
                self._run_threads()
            else:
                self._run_sequential()
        finally:
            self.summary.wall_s = time.perf_counter() - start

    def _run_sequential(self) -> None:
        try:
            for frame in self._decoded():
                chunk = self._timed("preprocess", self.work.preprocess, Chunk([frame]))
                chunk = self._timed("inference", self.work.infer, chunk)
                chunk = self._timed("set_decode", self.work.post, chunk)
                self._timed("write", self.work.write, chunk)
        except InputError as exc:  # e.g. a dropped stream: finalize the files, then raise
            self.error = exc

    def _run_threads(self) -> None:
        live = self.source.live
        size = self.batch if live else self.config.queue_size * self.batch
        frames: queue.Queue[Any] = queue.Queue(maxsize=size)
        qs: list[queue.Queue[Any]] = [queue.Queue(maxsize=self.config.queue_size)
                                      for _ in range(3)]
        self.threads = threads = [
            threading.Thread(target=self._decode_loop, args=(frames,), daemon=True),
            self._thread("preprocess", self.work.preprocess, frames, qs[0], gather=True),
            self._thread("inference", self.work.infer, qs[0], qs[1]),
            self._thread("set_decode", self.work.post, qs[1], qs[2]),
            self._thread("write", self.work.write, qs[2], None),
        ]
        for t in threads:
            t.start()
        try:
            for t in threads[1:]:
                while t.is_alive():
                    t.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop.set()
            self.source.stop()
            try:
                for t in threads[1:]:  # drain what is in flight
                    t.join()
            except KeyboardInterrupt:  # a second Ctrl-C: stop every stage now
                self.abort.set()
                for t in threads[1:]:
                    t.join(timeout=2.0)
            raise
        finally:
            self.stop.set()
            self.source.stop()
            threads[0].join(timeout=1.0)  # a blocked network read ends at its own timeout

    # ---- stages ------------------------------------------------------------------------

    def _decoded(self):  # Iterator[Frame], timed, counted, bounded by max_frames
        it = self.source.frames()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                return
            self.times["decode"].add(time.perf_counter() - t0)
            self.summary.frames_decoded += 1
            yield frame
            if self.config.max_frames and self.summary.frames_decoded >= self.config.max_frames:
                return

    def _decode_loop(self, out: queue.Queue[Any]) -> None:
        try:
            for frame in self._decoded():
                if self.source.live:
                    self._put_latest(out, frame)
                elif not self._put(out, frame):
                    return
        # A dropped stream (or any failure) ends the run cleanly; run_stream re-raises it.
        except BaseException as exc:  # noqa: BLE001
            self.error = self.error or exc
        finally:
            self._put(out, _END)

    def _put_latest(self, out: queue.Queue[Any], frame: Frame) -> None:
        """Latest-frame policy: when the queue is full, drop the oldest waiting frame."""
        while True:
            try:
                out.put_nowait(frame)
                return
            except queue.Full:
                try:
                    out.get_nowait()
                    self.summary.frames_dropped += 1
                except queue.Empty:
                    pass

    def _thread(self, name: str, fn: Callable[[Chunk], Chunk], inbox: queue.Queue[Any],
                outbox: queue.Queue[Any] | None, gather: bool = False) -> threading.Thread:
        def loop() -> None:
            try:
                while not self.abort.is_set():
                    item = self._gather(inbox) if gather else self._get(inbox)
                    if item is _END:
                        return
                    out = self._timed(name, fn, item)
                    if outbox is not None and not self._put(outbox, out):
                        return
            except BaseException as exc:  # noqa: BLE001  # forwarded to the main thread
                self.error = self.error or exc
                self.abort.set()
                self.stop.set()
            finally:
                if outbox is not None:
                    self._put(outbox, _END)

        return threading.Thread(target=loop, name=f"stream-{name}", daemon=True)

    def _timed(self, name: str, fn: Callable[[Chunk], Chunk], chunk: Chunk) -> Chunk:
        t0 = time.perf_counter()
        out = fn(chunk)
        now = time.perf_counter()
        self.times[name].add(now - t0, len(chunk.frames))
        if name == "write":
            for frame in chunk.frames:
                self.times["end_to_end"].add(now - frame.decoded_at)
            self.summary.frames_processed += len(chunk.frames)
        return out

    # ---- queues ------------------------------------------------------------------------

    def _get(self, inbox: queue.Queue[Any], until: threading.Event | None = None) -> Any:
        """Next item; the end marker when the run aborts, or when ``until`` is set and
        nothing waits (a source blocked in a network read is not waited for)."""
        while not self.abort.is_set():
            try:
                return inbox.get(timeout=_POLL_S)
            except queue.Empty:
                if until is not None and until.is_set():
                    return _END
        return _END

    def _gather(self, inbox: queue.Queue[Any]) -> Any:
        """Up to ``batch`` frames: files wait for a full batch, live sources take what waits."""
        first = self._get(inbox, until=self.stop)
        if first is _END:
            return _END
        frames = [first]
        while len(frames) < self.batch:
            if self.source.live:
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
            else:
                item = self._get(inbox, until=self.stop)
            if item is _END:
                inbox.put(_END)  # seen again on the next call, after this batch
                break
            frames.append(item)
        return Chunk(frames)

    def _put(self, outbox: queue.Queue[Any], item: Any) -> bool:
        """Blocking put that gives up when the run aborts; False if it gave up. The end
        marker always gets in (room is made: after an abort nobody needs the rest)."""
        while True:
            try:
                outbox.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if not self.abort.is_set():
                    continue
                if item is not _END:
                    return False
                try:
                    outbox.get_nowait()
                except queue.Empty:
                    pass
