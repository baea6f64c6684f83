"""Paired bootstrap over images: how much of a metric difference between two
configurations evaluated on the *same* images is noise.

Both configurations see the same resampled image sets (replicate r draws N
images with replacement, as per-image counts), so whatever makes some images
easy or hard cancels in the difference and only the disagreement between the
two configurations is left. The standard error is the standard deviation of the
difference over replicates (Efron & Tibshirani, *An Introduction to the
Bootstrap*, ch. 6). A metric is any function of the per-image counts, vectorised
over replicates, e.g. COCO AP on the weighted image set
(``detr.coco_resample.weighted_ap``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.errors import InputError

# metric(counts [R, N] float) -> [R]: the metric on each weighted image set.
Metric = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PairedDifference:
    """``metric(a) - metric(b)`` on all images, and its bootstrap standard error."""

    diff: float  # on the full image set (every count 1)
    se: float  # std over replicates of the paired difference (ddof=1)
    replicates: int
    num_images: int


def resample_counts(num_images: int, replicates: int, seed: int = 0) -> np.ndarray:
    """``[replicates, num_images]`` float counts: how often each image is drawn
    when ``num_images`` images are drawn with replacement (each row sums to N)."""
    if num_images < 1 or replicates < 2:
        raise InputError("bootstrap", f"needs >= 1 image and >= 2 replicates, got "
                         f"{num_images} / {replicates}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(replicates, num_images))
    counts = np.zeros((replicates, num_images))
    np.add.at(counts, (np.arange(replicates)[:, None], draws), 1.0)
    return counts


def paired_bootstrap(metric_a: Metric, metric_b: Metric, num_images: int,
                     replicates: int = 200, seed: int = 0) -> PairedDifference:
    """Paired bootstrap standard error of ``metric_a - metric_b`` over images.

    The same seeded counts go to both metrics, so the result is reproducible and
    two calls with the same seed compare like with like.
    """
    ones = np.ones((1, num_images))
    diff = float(metric_a(ones)[0] - metric_b(ones)[0])
    counts = resample_counts(num_images, replicates, seed)
    deltas = np.asarray(metric_a(counts), float) - np.asarray(metric_b(counts), float)  # [R]
    return PairedDifference(diff=diff, se=float(np.std(deltas, ddof=1)),
                            replicates=replicates, num_images=num_images)
