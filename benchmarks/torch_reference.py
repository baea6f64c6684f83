"""The PyTorch reference: the checkpoint's model in eager mode.

FP32 on CPU is the reference every other row is compared with; FP16 runs on
CUDA only (CPU half-precision convolutions are slow emulations and would not
say anything about deployment). The reference reads the SAME preprocessed
canvas as the ONNX graphs (``runtime.preprocess`` output), and gets the mask
only when the exported graph has a mask input, so both see identical inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import BackendUnavailableError


class TorchReference:
    """``infer(images, mask)`` with the Backend signature for a torch DETR.

    images: float32 [B, 3, H, W] normalised; mask: bool [B, H, W] (True = padding)
    or None. Returns logits float32 [B, Q, K+1], boxes float32 [B, Q, 4] cxcywh
    (``detr.torch_forward.forward_numpy``, the forward evaluation and parity use).
    """

    def __init__(self, model: Any, precision: str = "fp32", device: str = "cpu",
                 use_mask: bool = False) -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("no CUDA GPU")
        if precision == "fp16" and device != "cuda":
            raise BackendUnavailableError("PyTorch FP16 is only measured on a CUDA GPU")
        dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.eval().to(torch.device(device), dtype)
        self.use_mask = use_mask
        self.name = f"pytorch[{device}, {precision}]"

    def infer(self, images: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        from detr.torch_forward import forward_numpy

        return forward_numpy(self.model, images, mask if self.use_mask else None)

    def close(self) -> None:
        self.__dict__.pop("model", None)
