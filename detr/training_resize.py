"""How a checkpoint was trained, as far as its input sizes go.

DETR is evaluated the way it was trained (official ``main.py``): each image is
resized so its shorter side is the largest training scale and its longer side
at most ``max_size``, and a batch of differently sized images is padded with a
mask. A model that only ever saw same-size batches (square data, one scale, no
crop) never saw padding either: for it the maskless form is the faithful one.

:class:`TrainingResize` records this. New training checkpoints store it
explicitly (key :data:`CHECKPOINT_KEY`); older ones get it derived from their
``train_config``; official / Hugging Face weights get the paper's 800 / 1333,
padded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from runtime.preprocess import round_up_to_stride, shorter_side_size

CHECKPOINT_KEY = "training_resize"
PAPER_SHORTER = 800  # DETR paper: shorter side at eval = largest training scale
PAPER_MAX_SIZE = 1333  # longer side cap of the paper's RandomResize


@dataclass(frozen=True)
class TrainingResize:
    """The eval-time resize of a model's training, and whether it saw padding.

    shorter: pixels of the shorter side (= max of the training scales, or ``eval_size``).
    max_size: cap on the longer side (aspect ratio kept, the shorter side shrinks).
    padded: training batches held padding (mixed sizes: crop, several scales or
        non-uniform image shapes), i.e. the model was trained with the mask.
    source: where the figures come from: "recorded" (stored at training),
        "train_config" (derived from an older checkpoint's config) or "paper".
    """

    shorter: int
    max_size: int
    padded: bool
    source: str = "recorded"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def canvas(self) -> int:
        """The eval canvas side (:func:`rule_canvas`)."""
        return rule_canvas(self.shorter, self.max_size)

    def describe(self) -> str:
        return (f"shorter side {self.shorter}, longer <= {self.max_size}, "
                f"{'padded (mask)' if self.padded else 'never padded'} [{self.source}]")


def rule_canvas(shorter: int, max_size: int) -> int:
    """Side of the square canvas every image resized by the rule fits in, rounded up to
    the backbone stride 32 (what ``export-onnx`` accepts): the eval canvas."""
    return round_up_to_stride(max(shorter, max_size))


PAPER = TrainingResize(PAPER_SHORTER, PAPER_MAX_SIZE, padded=True, source="paper")


def from_train_config(cfg: Mapping[str, Any],
                      image_sizes: Iterable[tuple[int, int]] | None = None) -> TrainingResize:
    """The rule of a ``TrainConfig.to_dict()``; ``image_sizes`` ((h, w) of the
    training images) decide ``padded`` exactly when given.

    Without the sizes (a checkpoint written before this record existed), a run
    with one scale, no crop and ``max_size`` equal to that scale (a square
    training canvas, the setting for square data such as the demo model's) is
    taken as never padded; every other multi-image batch setting as padded.
    """
    scales = [int(s) for s in (cfg.get("scales") or [PAPER_SHORTER])]
    max_size = int(cfg.get("max_size") or PAPER_MAX_SIZE)
    shorter = int(cfg.get("eval_size") or max(scales))
    one_size = len(set(scales)) == 1 and not cfg.get("crop", True)
    if int(cfg.get("batch_size", 2)) <= 1:
        padded = False  # a batch of one image is never padded
    elif not one_size:
        padded = True  # random crops / several scales give every batch mixed sizes
    elif image_sizes is not None:
        resized = {shorter_side_size(h, w, scales[0], max_size) for h, w in image_sizes}
        padded = len(resized) > 1
    else:
        padded = max_size != scales[0]
    return TrainingResize(shorter, max_size, padded,
                          source="recorded" if image_sizes is not None else "train_config")


def from_checkpoint(raw: Any) -> TrainingResize:
    """The rule of an unpickled checkpoint: its record, else derived from its
    ``train_config``, else the paper's (official and HF weights, bare models)."""
    if not isinstance(raw, Mapping):
        return PAPER
    stored = raw.get(CHECKPOINT_KEY)
    if isinstance(stored, Mapping):
        try:
            return TrainingResize(int(stored["shorter"]), int(stored["max_size"]),
                                  bool(stored["padded"]), str(stored.get("source", "recorded")))
        except (KeyError, TypeError, ValueError):
            pass  # a malformed record: fall back to the config, which training always writes
    cfg = raw.get("train_config")
    if isinstance(cfg, Mapping):
        return from_train_config(cfg)
    return PAPER
