"""Stream figures: throughput of the pipelined runner against the sequential loop and
the model alone, preprocessing cost per 1080p frame (numpy vs in-graph), and MOTA /
IDF1 of the demo model + ByteTrack on synthetic clips.

``python -m benchmarks.stream_speed [--models demo r50] [--frames N] [--repeats R] [--work DIR]``

Throughput: a 720p H.264 clip of moving shapes (``detr.data.shapes_video``) through
``runtime.stream.run_stream``, ONNX Runtime CPU, outputs written (JSON Lines, and the
annotated 720p H.264 video unless noted). Modes: sequential (one thread, one frame
at a time: decode, preprocess, infer, decode sets, draw, encode) and pipelined
(threads + bounded queues; also with ONNX Runtime's busy-waiting intra-op threads, the
A/B of the stream's default). Model alone = ``Detector.infer_batch`` on a ready batch
(median of ``--runs``, the faster of ORT spinning on and off). Each of the ``repeats``
rounds measures the model alone and then every mode, and the ratio FPS x model-alone
is taken within a round, so a change of load from other processes between rounds
moves both; medians and min-max ranges over the rounds are printed, with the 1-minute
load average at each round. ``--models r50`` measures DETR-R50 at 800x1066, INT8 cpu format, random weights (the
model of ``benchmarks.r50_speed``; exporting and quantizing it takes minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.r50_speed import R50SpeedConfig, _prepare
from benchmarks.timing import time_call
from benchmarks.workflow.pipeline import DEMO_CHECKPOINT
from detr.data.shapes_video import ShapesVideoConfig, make_shapes_video
from detr.data.synthetic import ShapesConfig, render_image
from runtime.detector import Detector
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess


def make_clip(path: Path, frames: int, height: int = 720, width: int = 1280) -> Path:
    """A clip of ``frames`` moving shapes at ``height x width`` (cached)."""

    video = path / "clip-001" / "video.mp4"
    if not video.is_file():
        scale = min(height, width) / 192
        make_shapes_video(path, ShapesVideoConfig(
            num_clips=1, num_frames=frames, height=height, width=width, fps=30.0,
            radius=(round(12 * scale), round(26 * scale)),
            speed=(1.5 * scale, 4.0 * scale)), progress=False)
    return video


def demo_model(work: Path, dynamic: bool = True) -> Path:
    from export.onnx_export import ExportConfig, export_onnx

    out = work / ("demo128_dyn.onnx" if dynamic else "demo128.onnx")
    if not out.is_file():
        export_onnx(ExportConfig(checkpoint=str(DEMO_CHECKPOINT), out=str(out), height=128,
                                 width=128, dynamic_batch=dynamic, calib_images=1))
    return out


def r50_int8_cpu(work: Path) -> Path:
    paths = _prepare(R50SpeedConfig(work_dir=str(work)), work, threads=2, log=print)
    return Path(str(paths["ort_int8_cpu"]))


def first_frame(clip: Path) -> np.ndarray:
    import av

    with av.open(str(clip)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def cpu_ms() -> float:
    """CPU time of this process so far, all threads, user + system (ms)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def model_alone_ms(model: Path, frame: np.ndarray, runs: int, batch: int = 1,
                   spinning: bool | None = None) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) per frame of the model alone on ``batch``
    preprocessed frames (``spinning``: ORT's intra-op busy-wait; None = its default, on)."""

    with Detector(model, providers="cpu", batch_size=batch,
                  backend_options={"spinning": spinning}) as det:
        prepared = det.prepare([frame] * batch)
        det.infer_batch(prepared)
        start = cpu_ms()
        for _ in range(runs):
            det.infer_batch(prepared)
        cpu = (cpu_ms() - start) / runs / batch
        wall = time_call(lambda: det.infer_batch(prepared), runs=runs, warmup=1).median_ms
        return wall / batch, cpu


def _modes(batches: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    modes: dict[str, dict[str, Any]] = {"sequential": {"pipelined": False, "batch_size": 1}}
    for b in batches:
        modes[f"pipelined b{b}"] = {"batch_size": b}
        modes[f"pipelined b{b} no video"] = {"batch_size": b, "video": False}
    # A/B of the stream's ORT setting: the same runs with busy-waiting intra-op threads.
    modes["pipelined b1 ORT spinning"] = {"batch_size": 1, "ort_spinning": True}
    modes["pipelined b1 no video ORT spinning"] = {"batch_size": 1, "video": False,
                                                   "ort_spinning": True}
    modes["pipelined b1 x264 veryfast"] = {"batch_size": 1, "video_preset": "veryfast"}
    modes["pipelined b1 no video ORT 1 thread"] = {"batch_size": 1, "video": False,
                                                   "ort_threads": 1}
    return modes


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def throughput(model: Path, clip: Path, work: Path, repeats: int, batches: tuple[int, ...],
               runs: int) -> dict[str, Any]:
    """FPS of the sequential loop and the pipelined runner (per batch size, with and
    without the annotated video) and, in the same round, the model alone (best of ORT's
    spinning on/off, per batch size): each repeat measures everything once, so a ratio
    FPS x model-alone is taken within one round, under the load of that moment."""
    from runtime.stream.config import StreamConfig
    from runtime.stream.pipeline import run_stream

    modes = _modes(batches)
    fps: dict[str, list[float]] = {m: [] for m in modes}
    ratio: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}  # CPU ms per frame, all threads
    alone: dict[int, list[float]] = {b: [] for b in batches}
    alone_cpu: dict[int, list[float]] = {b: [] for b in batches}
    stages: dict[str, Any] = {}
    load: list[str] = []
    frame = first_frame(clip)
    for r in range(repeats):
        load.append(Path("/proc/loadavg").read_text().split(" ", 3)[0])
        measured = {b: min(model_alone_ms(model, frame, runs, b, spinning=s)
                           for s in (False, None)) for b in batches}  # the faster setting
        round_alone = {b: m[0] for b, m in measured.items()}
        for b, (ms, cpu_frame) in measured.items():
            alone[b].append(ms)
            alone_cpu[b].append(cpu_frame)
        for mode, options in modes.items():
            out = work / "runs" / f"{mode.replace(' ', '-')}-{r}"
            start = cpu_ms()
            summary = run_stream(StreamConfig(model=model, source=str(clip), out_dir=out,
                                              providers=["cpu"], **options))
            cpu[mode].append((cpu_ms() - start) / max(summary.frames_processed, 1))
            fps[mode].append(summary.fps)
            ratio[mode].append(summary.fps * round_alone[options["batch_size"]] / 1000)
            stages[mode] = summary.stages
    load.append(Path("/proc/loadavg").read_text().split(" ", 3)[0])
    return {"fps": {m: _spread(v) for m, v in fps.items()},
            "ratio": {m: _spread(v) for m, v in ratio.items()},
            "cpu_ms_per_frame": {m: _spread(v) for m, v in cpu.items()},
            "model_alone_ms": {b: _spread(v) for b, v in alone.items()},
            "model_alone_cpu_ms": {b: _spread(v) for b, v in alone_cpu.items()},
            "load_1min": load, "stages": stages}


def preprocess_1080p(canvases: list[tuple[int, int]], runs: int) -> dict[str, Any]:
    """ms per 1080p frame: ``runtime.preprocess`` vs the in-graph preprocessing on ORT CPU."""
    import onnxruntime as ort

    from export.fused_preprocess import preprocess_graph

    frame = np.ascontiguousarray(render_image(ShapesConfig(image_size=1920), "val", 0)[0][:1080])
    out: dict[str, Any] = {}
    for H, W in canvases:
        meta = ModelMeta(preset="x", input_height=H, input_width=W, class_names=["a"],
                         label_map=[1])
        session = ort.InferenceSession(preprocess_graph(meta, 1080, 1920).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        out[f"{H}x{W}"] = {
            "numpy_ms": time_call(functools.partial(preprocess, [frame], meta), runs=runs,
                                  warmup=2).median_ms,
            "fused_ort_cpu_ms": time_call(functools.partial(session.run, ["canvas"],
                                                            {"images": frame[None]}),
                                          runs=runs, warmup=2).median_ms}
    return out


def tracking_quality(model: Path, work: Path, clips: int, seed: int) -> dict[str, Any]:
    """MOTA / IDF1 of ``model`` + ByteTrack (default settings) on synthetic clips."""
    from runtime.stream.config import StreamConfig
    from runtime.stream.pipeline import run_stream

    root = work / f"clips-seed{seed}"
    if not (root / f"clip-{clips:03d}").is_dir():
        make_shapes_video(root, ShapesVideoConfig(seed=seed, num_clips=clips), progress=False)
    per_clip = []
    for c in range(1, clips + 1):
        clip = root / f"clip-{c:03d}"
        s = run_stream(StreamConfig(model=model, source=str(clip / "video.mp4"),
                                    out_dir=work / "track" / clip.name, track=True,
                                    gt=clip / "gt" / "gt.txt", video=False, providers=["cpu"]))
        per_clip.append(s.tracking)
    return {"clips": per_clip,
            "mean": {k: float(np.mean([m[k] for m in per_clip])) for k in ("MOTA", "IDF1")}}


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for name, row in result["throughput"].items():
        lines.append(f"{name}: 1-min load average at each round {', '.join(row['load_1min'])}; "
                     "model alone " + ", ".join(
                         f"b{b} {a['median']:.1f} ms/frame (range {a['min']:.1f}-{a['max']:.1f})"
                         for b, a in row["model_alone_ms"].items())
                     + "; CPU per frame " + ", ".join(f"b{b} {c['median']:.1f} ms" for b, c
                                                      in row["model_alone_cpu_ms"].items()))
        for mode, f in row["fps"].items():
            r, c = row["ratio"][mode], row["cpu_ms_per_frame"][mode]
            lines.append(f"  {mode:<36} {f['median']:7.2f} fps (range {f['min']:.2f}-"
                         f"{f['max']:.2f}) = {r['median']:.2f} x 1/model-alone of its round "
                         f"(range {r['min']:.2f}-{r['max']:.2f}); CPU {c['median']:.1f} ms/frame")
    for canvas, p in result["preprocess_1080p"].items():
        lines.append(f"preprocess 1080p -> {canvas}: numpy {p['numpy_ms']:.1f} ms, fused (ORT "
                     f"CPU) {p['fused_ort_cpu_ms']:.1f} ms; share of pre + model: "
                     + ", ".join(f"{k} {v:.0%}" for k, v in p.get("share", {}).items()))
    t = result.get("tracking")
    if not t:
        return lines
    lines.append(f"tracking ({len(t['clips'])} clips): MOTA {t['mean']['MOTA']:.3f}, "
                 f"IDF1 {t['mean']['IDF1']:.3f}; per clip MOTA/IDF1 " + "; ".join(
                     f"{m['MOTA']:.2f}/{m['IDF1']:.2f}" for m in t["clips"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("demo", "r50"), default=["demo"],
                        help="demo: detr-tiny 128x128; r50: DETR-R50 800x1066 INT8 cpu format "
                        "(exporting and quantizing it takes minutes)")
    parser.add_argument("--frames", type=int, default=90, help="frames of the 720p clip")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats per mode")
    parser.add_argument("--runs", type=int, default=30, help="timed runs (model, preprocess)")
    parser.add_argument("--clips", type=int, default=5,
                        help="synthetic clips for MOTA/IDF1 (0 = skip; demo model)")
    parser.add_argument("--work", default=None, help="cache folder (default: temporary)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args, work)
        for line in report_lines(result):
            print(line)
        (work / "stream_speed.json").write_text(json.dumps(result, indent=1, default=float))
    return 0


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    clip = make_clip(work / f"clip720-{args.frames}", args.frames)
    models: dict[str, tuple[Path, tuple[int, ...], tuple[int, int]]] = {}
    if "demo" in args.models:
        models["demo detr-tiny 128x128"] = (demo_model(work), (1, 8), (128, 128))
    if "r50" in args.models:
        models["DETR-R50 800x1066 INT8 cpu format"] = (r50_int8_cpu(work), (1,), (800, 1066))
    result: dict[str, Any] = {"throughput": {}, "preprocess_1080p": {}}
    alone: dict[str, float] = {}
    for name, (model, batches, (H, W)) in models.items():
        row = throughput(model, clip, work, args.repeats, batches, args.runs)
        result["throughput"][name] = row
        alone[f"{H}x{W}"] = row["model_alone_ms"][1]["median"]
    result["preprocess_1080p"] = preprocess_1080p([m[2] for m in models.values()], args.runs)
    for canvas, p in result["preprocess_1080p"].items():
        p["share"] = {k.replace("_ms", ""): v / (v + alone[canvas]) for k, v in p.items()
                      if k.endswith("_ms")}
    if "demo" in args.models and args.clips:
        result["tracking"] = tracking_quality(models["demo detr-tiny 128x128"][0], work,
                                              args.clips, seed=1)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
