"""Annotated images: boxes, class names and scores drawn with PIL (no matplotlib)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from runtime.decode import Detections

# Tableau-like palette: distinct, readable on photos; colour = label % len(PALETTE).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def draw_detections(image: Image.Image, detections: Detections,
                    line_width: int | None = None) -> Image.Image:
    """Return a copy of ``image`` (RGB) with each detection drawn.

    detections.boxes are xyxy in the pixel coordinates of ``image``; labels are
    written as "<class name> <score>" above the box (inside it at the top edge).
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = line_width or max(1, round(min(out.size) / 200))
    font = ImageFont.load_default()
    for i in range(len(detections)):
        x0, y0, x1, y1 = (float(v) for v in detections.boxes[i])
        label = int(detections.labels[i])
        colour = PALETTE[label % len(PALETTE)]
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=width)
        name = detections.class_names[i] if detections.class_names else str(label)
        text = f"{name} {float(detections.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 2 if y0 - th - 2 >= 0 else y0  # above the box unless at the top edge
        draw.rectangle([x0, ty, x0 + tw + 2, ty + th + 2], fill=colour)
        draw.text((x0 + 1, ty - top + 1), text, fill=(255, 255, 255), font=font)
    return out
