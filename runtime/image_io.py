"""The one image loader of detr-edge: path / PIL image / numpy array -> RGB PIL image.

Used by the runtime (``predict``), the training data (``detr.data.coco``) and
the benchmarks, so every part sees the same pixels for the same file. numpy and
pillow only: the runtime never imports torch.

Conventions:
- EXIF orientation is applied (``ImageOps.exif_transpose``): phone JPEGs store
  pixels sideways plus an orientation tag, and annotations refer to the
  displayed (rotated) image.
- Alpha is dropped by compositing onto black, because black is the value the
  preprocessing pads with, so transparent areas look like padding rather than
  an arbitrary colour (a plain ``convert("RGB")`` keeps the hidden colour
  values under transparent pixels, which are often garbage).
- 16-bit and 32-bit grayscale are scaled to 8 bits by their full type range
  (65535 for I;16, integers clipped to 0..65535 for I, floats taken as [0, 1]),
  not clipped at 255 as ``Image.convert("L")`` does.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.errors import DataError
from runtime.files import is_regular, open_regular

ImageSource = str | os.PathLike | Image.Image | np.ndarray


DEFAULT_MAX_PIXELS = 64_000_000  # 64 Mpx: 192 MB as RGB, which an edge device can hold
MAX_PIXELS_ENV = "DETR_EDGE_MAX_PIXELS"  # overrides the default (predict: --max-pixels)


def max_pixels_limit(override: int | None = None) -> int:
    """The pixel limit of :func:`load_image`: ``override``, else $DETR_EDGE_MAX_PIXELS,
    else :data:`DEFAULT_MAX_PIXELS`."""
    if override is not None:
        return override
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not (text.isascii() and text.isdigit()) or int(text) <= 0 or len(text) > 15:
        raise DataError(MAX_PIXELS_ENV, f"must be a positive integer number of pixels, "
                        f"got {text[:40]!r}")
    return int(text)


def load_image(src: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Return ``src`` as a fully decoded RGB ``PIL.Image.Image`` (mode ``"RGB"``).

    ``src`` is a file path, a PIL image or a numpy array shaped ``[H, W]``,
    ``[H, W, 1]``, ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA) of dtype uint8,
    uint16 (full 0..65535 range) or float (values in [0, 1]).

    A file declaring more than ``max_pixels`` (default :func:`max_pixels_limit`)
    is refused from its header, before any decoding: a 400 KB PNG can hold
    144 Mpx (1.2 GB decoded). PIL's own bomb limit (~179 Mpx) still applies.

    Raises ``DataError(where, problem)`` for a missing, unreadable, corrupt,
    truncated, too large or non-image file (FIFOs and devices are never opened
    for reading), or an array of unsupported shape or dtype.
    """
    if isinstance(src, Image.Image):
        return _to_rgb(src, "<PIL image>")
    if isinstance(src, np.ndarray):
        # No second copy: PIL unpacks an RGB array into an image of its own (RGB is not
        # among the modes frombuffer maps), and other modes are converted to a new one.
        # Saves ~10 of ~17 ms of CPU per 720p video frame (README, stream figures).
        return _to_rgb(_array_to_pil(src), "<array>", copy=False)
    if isinstance(src, (str, os.PathLike)):
        return _load_path(Path(src), max_pixels_limit(max_pixels))
    raise DataError("<image>", f"unsupported image source type {type(src).__name__}")


def _load_path(path: Path, max_pixels: int) -> Image.Image:
    if path.is_dir():
        raise DataError(path, "is a directory, not an image file")
    with open_regular(path) as fh:
        return _decode(fh, path, max_pixels)


def _decode(fh: BinaryIO, path: Path, max_pixels: int) -> Image.Image:
    try:
        # PIL warns (DecompressionBombWarning) from 89 Mpx; the limit below is what
        # decides, and a warning printed before the error line would break the one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
        with img:
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise DataError(path, f"image is {img.width}x{img.height} ({pixels / 1e6:.1f} Mpx)"
                                f", above the limit of {max_pixels / 1e6:g} Mpx (raise it with "
                                f"--max-pixels or ${MAX_PIXELS_ENV})")
            # load() forces the full decode here, inside the try, so a truncated
            # file fails now with its name instead of later inside a transform.
            img.load()
            upright = _exif_upright(img)
            # exif_transpose already returns a new image: copy only when it did not.
            out = _to_rgb(upright, path, copy=upright is img)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        # A tiny file can declare billions of pixels; PIL refuses before allocating.
        raise DataError(path, f"image too large to decode safely ({_short(exc)})") from exc
    except UnidentifiedImageError as exc:
        raise DataError(path, f"not an image or corrupt ({_short(exc)})") from exc
    except PermissionError as exc:
        raise DataError(path, "permission denied") from exc
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise DataError(path, "truncated image") from exc
        raise DataError(path, f"not an image or corrupt ({_short(exc)})") from exc
    except (ValueError, SyntaxError, struct.error, EOFError) as exc:
        # PIL raises SyntaxError / ValueError from some format plugins on broken headers.
        raise DataError(path, f"not an image or corrupt ({_short(exc)})") from exc
    return out


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag. A malformed EXIF block (common in files
    from old cameras and editors) must not make an otherwise good image
    unreadable, so on a parsing error the pixels are used as stored."""
    try:
        fixed = ImageOps.exif_transpose(img)
    except (ValueError, TypeError, KeyError, SyntaxError, OSError, struct.error):
        return img
    return fixed if fixed is not None else img


def _short(exc: BaseException) -> str:
    text = str(exc).replace(os.linesep, " ")
    return text if len(text) <= 160 else text[:157] + "..."


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """numpy ``[H,W]``/``[H,W,C]`` (C in 1,3,4) -> PIL image of mode L/RGB/RGBA."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise DataError("<array>", f"expected shape HxW, HxWx1, HxWx3 or HxWx4, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError("<array>", f"empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        u8 = arr
    elif arr.dtype == np.uint16:
        u8 = _scale_to_u8(arr.astype(np.float64) / 65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError("<array>", "float image contains NaN or infinity")
        u8 = _scale_to_u8(arr.astype(np.float64))
    elif arr.dtype == np.bool_:
        u8 = arr.astype(np.uint8) * 255
    else:
        raise DataError("<array>", f"unsupported dtype {arr.dtype} (use uint8, uint16 or float)")
    # uint8 [H,W] -> "L", [H,W,3] -> "RGB", [H,W,4] -> "RGBA" (PIL infers the mode).
    return Image.fromarray(np.ascontiguousarray(u8))


def _scale_to_u8(unit: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 with rounding to nearest."""
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _composite_on_black(img: Image.Image) -> Image.Image:
    """RGBA -> RGB with alpha applied over a black background (see module doc)."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
    alpha = rgba[:, :, 3:4]
    rgb = (rgba[:, :, :3] * alpha + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))


def _to_rgb(img: Image.Image, where: str | os.PathLike, copy: bool = True) -> Image.Image:
    """``img`` as RGB; an RGB image is copied (detached from the caller's or the
    open file's image) unless ``copy`` is False."""
    mode = img.mode
    if mode == "RGB":
        return img.copy() if copy else img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = _scale_to_u8(np.asarray(img, dtype=np.float64) / 65535.0)
        return Image.fromarray(gray).convert("RGB")
    if mode == "I":
        # 32-bit ints: in practice 16-bit PNGs opened as "I"; treat as 0..65535.
        gray = _scale_to_u8(np.asarray(img, dtype=np.float64) / 65535.0)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        data = np.asarray(img, dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise DataError(where, "float image contains NaN or infinity")
        return Image.fromarray(_scale_to_u8(data)).convert("RGB")
    if mode == "P":
        # Palette images may carry transparency (tRNS); go through RGBA to honour it.
        if "transparency" in img.info:
            return _composite_on_black(img.convert("RGBA"))
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_black(img)
    if mode == "CMYK":
        return img.convert("RGB")
    if mode in ("L", "1", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(where, f"unsupported image mode {mode!r} ({_short(exc)})") from exc


# File name endings treated as images when a folder is given (predict, calibration data).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path for determinism.

    Raises ``DataError`` naming the folder when it is missing or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "folder not found")
    paths = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and is_regular(p))
    if not paths:
        raise DataError(root, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return paths
