"""``make-dataset shapes-video``: clips of moving shapes with MOTChallenge ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from detr.data.shapes_video import ShapesVideoConfig, make_shapes_video
from runtime.cli import main
from runtime.errors import InputError


def _gt(path):
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    return rows  # frame, id, x, y, w, h, conf, class, visibility


def test_cli_writes_playable_clips_with_ground_truth(tmp_path, capsys) -> None:
    import av

    out = tmp_path / "sv"
    code = main(["make-dataset", "shapes-video", "--out", str(out), "--clips", "2",
                 "--frames", "24", "--image-size", "96", "--seed", "3"])
    assert code == 0
    assert "clip-002: 24 frames" in capsys.readouterr().out
    for clip in ("clip-001", "clip-002"):
        with av.open(str(out / clip / "video.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 24 and frames[0].shape == (96, 96, 3)
        gt = _gt(out / clip / "gt" / "gt.txt")
        assert gt[:, 0].min() >= 1 and gt[:, 0].max() <= 24
        assert (gt[:, 6] == 1).all() and (gt[:, 7] == 1).all()  # scored rows, class 1
        assert (gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= 96).all()  # inside the frame
        labels = json.loads((out / clip / "gt" / "labels.json").read_text())
        assert {int(k) for k in labels} == {int(i) for i in np.unique(gt[:, 1])}
        assert "frameRate=10" in (out / clip / "seqinfo.ini").read_text()


def test_tracks_enter_leave_and_occlude() -> None:
    """Over a few clips: some tracks start after frame 1 or end before the last frame,
    some rows are partly hidden, and each track's boxes move between frames."""
    import tempfile
    from pathlib import Path

    config = ShapesVideoConfig(num_clips=3, num_frames=30, height=128, width=128,
                               radius=(8, 18))
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes_video(tmp, config, progress=False)
        gts = [_gt(Path(tmp) / f"clip-{c:03d}" / "gt" / "gt.txt") for c in (1, 2, 3)]
    entering = leaving = moving = 0
    for gt in gts:
        for tid in np.unique(gt[:, 1]):
            rows = gt[gt[:, 1] == tid]
            entering += rows[:, 0].min() > 1
            leaving += rows[:, 0].max() < config.num_frames
            moving += np.abs(np.diff(rows[:, 2])).max() > 0
    assert entering > 0 and leaving > 0 and moving > 0
    assert any((gt[:, 8] < 0.9).any() for gt in gts)  # occlusion


def test_same_seed_same_ground_truth(tmp_path) -> None:
    config = ShapesVideoConfig(num_clips=1, num_frames=10, height=96, width=96, radius=(8, 16))
    make_shapes_video(tmp_path / "a", config, progress=False)
    make_shapes_video(tmp_path / "b", config, progress=False)
    gt = "clip-001/gt/gt.txt"
    assert (tmp_path / "a" / gt).read_text() == (tmp_path / "b" / gt).read_text()


def test_bad_config_is_input_error() -> None:
    with pytest.raises(InputError, match="radius"):
        ShapesVideoConfig(height=64, width=64, radius=(10, 40)).validate()
