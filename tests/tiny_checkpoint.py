"""The small random-init DETR checkpoints of the tests, built in one place.

``SMALL`` keeps the tiny preset's ResNet-18 and narrows the transformer (1 encoder,
2 decoder layers: the decoder still has an auxiliary output to train). Checkpoints
for a dataset take its categories; ``SQUARE_64`` records training at 64 px on square
images without padding, which keeps the reference eval of benchmarks small.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SMALL = {"hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 2,
         "dim_feedforward": 64, "num_queries": 5}
SQUARE_64 = {"training_resize": {"shorter": 64, "max_size": 64, "padded": False}}


def dataset_categories(data: Path) -> list[tuple[int, str]]:
    """(id, name) of each category of ``data``'s val split, in file order."""
    doc = json.loads((data / "annotations" / "instances_val.json").read_text())
    return [(c["id"], c["name"]) for c in doc["categories"]]


def save_tiny_checkpoint(path: Path, categories: Sequence[tuple[int, str]],
                         overrides: dict[str, Any] | None = None, seed: int = 0,
                         extra: dict[str, Any] | None = None) -> Path:
    """A random ``detr-tiny`` (``overrides`` on the preset, default ``SMALL``) for
    ``categories`` [(id, name)], saved with ``extra`` fields; returns ``path``."""
    import torch

    import detr

    torch.manual_seed(seed)
    config = detr.get_config("detr-tiny", **(SMALL if overrides is None else overrides))
    model = detr.build_model_from_config(config, len(categories))
    detr.save_checkpoint(path, model, config, [n for _, n in categories],
                         [i for i, _ in categories], extra=extra)
    return path
