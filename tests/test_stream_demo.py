"""The stream path with the demo model (``detr/assets/detr-tiny-shapes.pth`` exported to
ONNX at 128x128) on ``shapes-video`` clips: tracking evaluated against the ground
truth, the latest-frame policy, and the fused-preprocessing model's parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("trackers")
pytest.importorskip("torch")

from runtime.decode import Detections
from runtime.stream.config import StreamConfig
from runtime.stream.pipeline import run_stream

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "detr" / "assets" / "detr-tiny-shapes.pth"
SOURCE = (192, 192)  # clip frame size, and the fused model's source size

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """Plain and fused ONNX exports of the demo model, and two 40-frame clips."""
    import onnx

    from detr.data.shapes_video import ShapesVideoConfig, make_shapes_video
    from export.fused_preprocess import fuse_with_check
    from export.onnx_export import ExportConfig, export_onnx
    from export.onnx_meta import read_meta

    root = tmp_path_factory.mktemp("demo")
    plain = root / "tiny.onnx"
    result = export_onnx(ExportConfig(checkpoint=str(CHECKPOINT), out=str(plain), height=128,
                                      width=128, dynamic_batch=True, calib_images=1))
    assert result.parity.passed
    model = onnx.load(plain)
    # The export-onnx hook on the exported graph: fuse, then parity on synthetic scenes.
    config = ExportConfig(checkpoint=str(CHECKPOINT), out="", fused_source=SOURCE,
                          calib_images=4)
    fused, _, report = fuse_with_check(model, read_meta(model), config)
    assert report.passed and report.detections_ref > 0, report.format()
    assert report.canvas_max_abs < 0.02
    onnx.save(fused, root / "tiny.fused.onnx")
    make_shapes_video(root / "clips", ShapesVideoConfig(num_clips=2, num_frames=40,
                                                        height=SOURCE[0], width=SOURCE[1]),
                      progress=False)
    return {"plain": plain, "fused": root / "tiny.fused.onnx", "clips": root / "clips",
            "root": root}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tracking_against_ground_truth(demo) -> None:
    import av

    clip = demo["clips"] / "clip-001"
    out = demo["root"] / "tracked"
    summary = run_stream(StreamConfig(model=demo["plain"], source=str(clip / "video.mp4"),
                                      out_dir=out, track=True, gt=clip / "gt" / "gt.txt"))
    assert summary.frames_processed == 40
    metrics = summary.tracking
    assert set(metrics) >= {"MOTA", "IDF1", "IDSW"}
    assert -1.0 < metrics["MOTA"] <= 1.0 and 0.1 < metrics["IDF1"] <= 1.0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["tracking"]["IDF1"] == pytest.approx(metrics["IDF1"])
    records = _jsonl(out / "detections.jsonl")
    assert len(records) == 40
    spans: dict[int, list[int]] = {}
    for r in records:
        assert len(r["track_ids"]) == len(r["boxes"]) == len(set(r["track_ids"]))
        for tid in r["track_ids"]:
            spans.setdefault(tid, []).append(r["frame"])
    assert max(len(frames) for frames in spans.values()) >= 10  # ids persist over frames
    mot = np.loadtxt(out / "tracks.txt", delimiter=",", ndmin=2)
    assert mot.shape[1] == 10 and (mot[:, 0] >= 1).all() and (mot[:, 7:] == -1).all()
    assert len(mot) == sum(len(r["track_ids"]) for r in records)
    with av.open(str(out / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 40


def test_ground_truth_scores_itself_perfectly(demo) -> None:
    """The evaluation path: the ground truth as tracker output has MOTA = IDF1 = 1."""
    from runtime.stream.summary import evaluate_tracks

    gt = demo["clips"] / "clip-002" / "gt" / "gt.txt"
    as_results = demo["root"] / "gt-as-results.txt"
    rows = [line.split(",") for line in gt.read_text().splitlines()]
    as_results.write_text("".join(",".join([*r[:6], "1", "-1", "-1", "-1"]) + "\n"
                                  for r in rows))
    metrics = evaluate_tracks(gt, as_results)
    assert metrics["MOTA"] == pytest.approx(1.0) and metrics["IDF1"] == pytest.approx(1.0)
    assert metrics["IDSW"] == 0 and metrics["FP"] == 0 and metrics["FN"] == 0


def test_live_policy_drops_stale_frames(demo) -> None:
    """A file read as a live source with batch 1: decoding outruns the model, so stale
    frames are dropped, every decoded frame is accounted for, the newest are kept."""
    clip = demo["clips"] / "clip-001" / "video.mp4"
    out = demo["root"] / "live"
    summary = run_stream(StreamConfig(model=demo["plain"], source=str(clip), out_dir=out,
                                      live=True, batch_size=1, video=False))
    assert summary.frames_decoded == 40
    assert summary.frames_dropped > 0
    assert summary.frames_processed + summary.frames_dropped == 40
    frames = [r["frame"] for r in _jsonl(out / "detections.jsonl")]
    assert frames == sorted(frames) and frames[-1] == 39  # the last frame is never stale


def test_fused_model_matches_numpy_path(demo) -> None:
    """Same clip through the plain model (numpy preprocessing) and the fused one:
    >= 99% of detections match (same label, IoU >= 0.9; runtime.compare's matching)."""
    from runtime.compare import match_detections

    clip = str(demo["clips"] / "clip-002" / "video.mp4")
    runs = {}
    for name in ("plain", "fused"):
        out = demo["root"] / f"parity-{name}"
        run_stream(StreamConfig(model=demo[name], source=clip, out_dir=out, threshold=0.3,
                                video=False))
        runs[name] = _jsonl(out / "detections.jsonl")
    total = matched = 0
    for ref, got in zip(runs["plain"], runs["fused"]):
        a, b = (Detections(np.asarray(r["scores"], np.float32), np.asarray(r["classes"]),
                           np.asarray(r["boxes"], np.float32).reshape(-1, 4)) for r in (ref, got))
        total += max(len(a), len(b))
        matched += match_detections(a, b)
    assert total > 40  # the clips hold objects the model finds
    assert matched / total >= 0.99


def test_fused_model_passes_check_onnx(demo, capsys) -> None:
    from runtime.cli import main

    assert main(["check-onnx", str(demo["fused"])]) == 0, capsys.readouterr().out
