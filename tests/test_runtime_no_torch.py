"""runtime/ must work without torch: block it and run a full detection + predict."""

from __future__ import annotations

from no_torch import run_without_torch
from tiny_onnx import make_tiny_onnx, tiny_meta


def test_blocker_really_blocks() -> None:
    proc = run_without_torch("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_detection_and_predict_without_torch(tmp_path) -> None:
    model = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta(48, 64, with_mask=True))
    from PIL import Image

    Image.new("RGB", (90, 40), (10, 200, 30)).save(tmp_path / "x.png")
    proc = run_without_torch(f"""
        import sys
        import numpy as np
        import runtime
        from runtime import Detector
        from runtime.cli import main
        det = Detector({str(model)!r})
        res = det.detect([np.zeros((40, 90, 3), np.uint8), {str(tmp_path / "x.png")!r}])
        assert len(res) == 2 and len(res[0]) == 3, res
        code = main(["predict", "--model", {str(model)!r}, "--images",
                     {str(tmp_path / "x.png")!r}, "--out", {str(tmp_path / "out")!r}])
        assert code == 0
        # every runtime module, including the TensorRT backend, imports without torch
        import runtime.backends.tensorrt_backend, runtime.engine_file, runtime.draw
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not loaded, loaded
        print("OK", res[0].class_names)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "OK ['circle', 'square', 'triangle']" in proc.stdout
    assert (tmp_path / "out" / "predictions.json").exists()
