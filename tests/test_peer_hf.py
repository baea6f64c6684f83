"""benchmarks.peer_hf on a miniature config: the same network on both sides, both
training steps update the same parameters, every comparison row is filled (ONNX
Runtime included) and the ratios are HF time / detr-edge time. Speed itself is
printed by the benchmark, not asserted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="transformers not installed (dev extra)")
pytest.importorskip("onnxruntime")

from benchmarks.peer_hf import PeerConfig, build_pair, format_result, run_peer, train_steps

MINI = PeerConfig(name="mini", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
                  dim_feedforward=64, num_queries=10, num_classes=3, height=64, width=64,
                  train_batch=2, rounds=2, runs=1, warmup=1)


def test_both_train_steps_update_the_same_parameters() -> None:
    ours, hf, diff = build_pair(MINI)
    assert diff < 1e-4  # eval logits of the two implementations agree
    trainable = {"ours": [n for n, p in ours.named_parameters() if p.requires_grad],
                 "hf": [n for n, p in hf.named_parameters() if p.requires_grad]}
    # Official DETR: ResNet stem and layer1 frozen, layer2-4 trained (HF: stages 1-3).
    assert not any("layer1" in n or "body.conv1" in n for n in trainable["ours"])
    assert any("backbone.0.body.layer2" in n for n in trainable["ours"])
    assert any("stages.1" in n for n in trainable["hf"])
    assert not any("stages.0" in n or "embedder" in n for n in trainable["hf"])
    watched = {"ours": dict(ours.named_parameters())["backbone.0.body.layer4.1.conv2.weight"],
               "hf": next(p for n, p in hf.named_parameters()
                          if "stages.3.layers.1.layer.1.convolution" in n)}
    before = {k: v.detach().clone() for k, v in watched.items()}
    steps = train_steps(MINI, ours, hf)
    for name, step in steps.items():
        step()
        assert not torch.equal(before[name], watched[name].detach()), name


def test_run_peer_fills_every_row() -> None:
    result = run_peer(MINI, threads=1)
    assert result["max_logit_diff"] < 1e-4 and result["threads"] == 1
    rows = {c["what"]: c for c in result["comparisons"]}
    assert list(rows) == ["train step (batch 2)", "eager PyTorch (batch 1)",
                          "onnxruntime FP32 (batch 1)"]
    for row in rows.values():
        assert row["skipped"] is None and row["rounds"] == 2
        assert len(row["ours_ms_rounds"]) == len(row["hf_ms_rounds"]) == 2
        ratios = [h / o for o, h in zip(row["ours_ms_rounds"], row["hf_ms_rounds"])]
        assert row["ratio"] == pytest.approx(float(np.median(ratios)))
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    text = format_result(result)
    assert "| onnxruntime FP32 (batch 1) |" in text and "2 rounds" in text
