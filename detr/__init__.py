"""detr package."""
