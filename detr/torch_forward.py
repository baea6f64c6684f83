"""A PyTorch DETR on numpy inputs: the one place the numpy pipeline
(``runtime.preprocess`` batches) meets torch tensors.

Used by evaluation (``detr.evaluate``), export parity (``export.parity``) and the
benchmark's PyTorch rows (``benchmarks.torch_reference``), so all three feed the
model the same way and read the same outputs back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def forward_numpy(model: nn.Module, images: np.ndarray, mask: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (a DETR: ``model(images, mask=...)`` -> ``pred_logits``,
    ``pred_boxes``) without autograd on the device and dtype of its parameters.

    images: float32 [B, 3, H, W] normalised; mask: bool [B, H, W] (True = padding)
    or None (no mask input). Returns float32 numpy logits [B, Q, K+1] and boxes
    [B, Q, 4] normalised cxcywh; ``.cpu()`` waits for a CUDA model to finish.
    """
    param = next(model.parameters())
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(param.device, param.dtype)
        m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).to(param.device)
        out = model(x, mask=m)
        logits = out["pred_logits"].float().cpu().numpy()  # [B, Q, K+1]
        boxes = out["pred_boxes"].float().cpu().numpy()  # [B, Q, 4]
    return logits, boxes
