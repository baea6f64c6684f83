"""The installed detr-edge version, recorded in checkpoints and exported models."""

from __future__ import annotations

from importlib import metadata

UNKNOWN = "0+unknown"  # PEP 440: a checkout that is not pip-installed has no known version


def package_version() -> str:
    """detr-edge's distribution version, or ``UNKNOWN`` when it is not installed
    (never a guessed release number, which would go stale)."""
    try:
        return metadata.version("detr-edge")
    except metadata.PackageNotFoundError:
        return UNKNOWN
