"""Evaluation: runtime preprocessing + mask + decode to original pixels, label map,
second-best decoding, the eval command and its files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_checkpoint import SMALL

import detr
from detr.coco_eval import AP_KEYS, coco_metrics
from detr.data.synthetic import ShapesConfig, make_shapes_dataset
from detr.evaluate import EvalConfig, evaluate
from runtime.errors import DataError

LABEL_MAP = [2, 5, 7, 11, 13, 17]  # what make_shapes_dataset writes (non-contiguous)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_eval")
    # Variable image sizes: the canvas fit, the mask and the mapping back all matter.
    make_shapes_dataset(root, ShapesConfig(seed=4, num_train=0, num_val=5,
                                           variable_size=(48, 112), max_objects=2),
                        progress=False)
    return root


def _constant_model(label: int, no_object_logit: float = 0.0) -> torch.nn.Module:
    """A real DETR whose heads ignore the features: every query predicts class
    ``label`` and the box (cx, cy, w, h) = (0.5, 0.5, 0.5, 0.5) of the valid region."""
    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", num_classes=len(LABEL_MAP), **SMALL)
    with torch.no_grad():
        model.class_embed.weight.zero_()
        model.class_embed.bias.zero_()
        model.class_embed.bias[label] = 4.0
        model.class_embed.bias[-1] = no_object_logit
        last = model.bbox_embed.layers[-1]
        last.weight.zero_()
        last.bias.zero_()  # sigmoid(0) = 0.5
    return model


def _gt_sizes(root) -> dict[int, tuple[int, int]]:
    gt = json.loads((root / "annotations" / "instances_val.json").read_text())
    return {img["id"]: (img["width"], img["height"]) for img in gt["images"]}


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_boxes_in_original_pixels_with_original_category_ids(shapes, size):
    result = evaluate(_constant_model(label=3), EvalConfig(data=str(shapes), size=size,
                                                          progress=False))
    sizes = _gt_sizes(shapes)
    assert result.num_images == len(sizes) == 5
    assert len(result.detections) == 5 * SMALL["num_queries"]
    for det in result.detections:
        w, h = sizes[det["image_id"]]
        # Centre half of the ORIGINAL image, whatever the canvas and padding were.
        np.testing.assert_allclose(det["bbox"], [0.25 * w, 0.25 * h, 0.5 * w, 0.5 * h],
                                   rtol=1e-4, atol=1e-3)
        assert det["category_id"] == LABEL_MAP[3]
    # The metrics are COCO AP of exactly those boxes: the same detections written by
    # hand (score = softmax of logit 4 against six logits 0) give the same figures.
    score = math.exp(4.0) / (math.exp(4.0) + 6.0)
    by_hand = [{"image_id": i, "category_id": LABEL_MAP[3], "score": score,
                "bbox": [0.25 * w, 0.25 * h, 0.5 * w, 0.5 * h]}
               for i, (w, h) in sizes.items() for _ in range(SMALL["num_queries"])]
    assert all(d["score"] == pytest.approx(score, rel=1e-5) for d in result.detections)
    gt = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    expected = coco_metrics(gt, by_hand)
    assert set(result.metrics) == set(AP_KEYS)
    assert result.metrics == pytest.approx(expected, abs=1e-6)


def test_second_best_keeps_slots_whose_top_class_is_no_object(shapes):
    model = _constant_model(label=1, no_object_logit=8.0)
    config = EvalConfig(data=str(shapes), size=(64, 64), progress=False, second_best=False)
    plain = evaluate(model, config)
    assert plain.detections == [] and all(v == 0.0 for v in plain.metrics.values())
    assert plain.protocol["decoding"] == "drop no-object slots"
    config.second_best = True
    kept = evaluate(model, config)
    assert kept.protocol["decoding"].startswith("official PostProcess")
    # The official PostProcess is the default.
    assert EvalConfig(data=str(shapes)).second_best is True
    assert len(kept.detections) == 5 * SMALL["num_queries"]
    assert {d["category_id"] for d in kept.detections} == {LABEL_MAP[1]}
    # Score = softmax probability of the best real class, below the no-object one.
    assert all(0.0 < d["score"] < 0.5 for d in kept.detections)


def test_label_map_from_another_dataset_is_refused(shapes):
    with pytest.raises(DataError, match=r"category ids \[101, 102\] are not in this dataset"):
        evaluate(_constant_model(0), EvalConfig(data=str(shapes), size=(64, 64), progress=False),
                 label_map=[2, 5, 7, 11, 101, 102])


def test_eval_command_writes_files(shapes, tmp_path, capsys):
    from runtime.cli import main

    ckpt = tmp_path / "model.pth"
    model = _constant_model(label=2)
    detr.save_checkpoint(ckpt, model, model.config, ["circle", "square", "triangle", "star",
                                                     "ellipse", "cross"], LABEL_MAP)
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(shapes), "--size", "80", "80",
                 "--out", str(out), "--max-images", "3"]) == 0
    text = capsys.readouterr().out
    assert "3 images; resize: fit into a fixed 80x80 canvas" in text and "AP50:" in text
    assert "decoding: official PostProcess" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and set(AP_KEYS) <= set(metrics)
    assert metrics["protocol"]["decoding"].startswith("official PostProcess")
    dets = json.loads((out / "detections.json").read_text())
    assert len({d["image_id"] for d in dets}) == 3
    assert {d["category_id"] for d in dets} == {LABEL_MAP[2]}

    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(shapes), "--split", "nope",
                 "--size", "80", "80"]) == 2
    assert "dataset has no split 'nope'" in capsys.readouterr().err


def test_eval_outputs_replace_the_previous_pair_together(shapes, tmp_path, capsys, monkeypatch):
    """A failed write keeps the previous run's detections.json and metrics.json as
    they were (both from one run), and an --out that would overwrite the
    annotation file is refused before any evaluation."""
    import shutil

    from runtime.cli import main

    ckpt = tmp_path / "model.pth"
    model = _constant_model(label=2)
    detr.save_checkpoint(ckpt, model, model.config, ["circle", "square", "triangle", "star",
                                                     "ellipse", "cross"], LABEL_MAP)
    out = tmp_path / "eval"
    base = ["eval", "--checkpoint", str(ckpt), "--data", str(shapes), "--size", "80", "80",
            "--out", str(out)]
    assert main([*base, "--max-images", "2"]) == 0
    before = {n: (out / n).read_bytes() for n in ("detections.json", "metrics.json")}

    real_write = type(out).write_text

    def failing_write(self, text, *a, **k):
        if self.name == "metrics.json":
            raise OSError(28, "No space left on device")
        return real_write(self, text, *a, **k)

    monkeypatch.setattr(type(out), "write_text", failing_write)
    assert main([*base, "--max-images", "3"]) == 2
    monkeypatch.undo()
    assert {n: (out / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "metrics.json"]
    capsys.readouterr()

    # The annotation file copied into the output folder under an output's name.
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    ann = next((data / "annotations").glob("*val*.json"))
    target = tmp_path / "clash"
    target.mkdir()
    (target / "metrics.json").symlink_to(ann)
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--size", "80", "80",
            "--out", str(target)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an input of this evaluation" in err[0]
    assert json.loads(ann.read_text())["images"]
