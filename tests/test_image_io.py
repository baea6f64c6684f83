"""runtime.image_io.load_image on every supported mode and on broken files.

All images are made here; expected pixel values are computed by hand from the
conversion rules in the module docstring.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import DataError
from runtime.image_io import load_image


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int32)


def test_rgb_png_is_lossless(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.size == (23, 17)
    np.testing.assert_array_equal(_rgb(out), arr)


def test_grayscale_l_replicated_to_three_channels(tmp_path: Path) -> None:
    arr = np.arange(0, 240, 4, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(arr).save(tmp_path / "g.png")
    out = _rgb(load_image(str(tmp_path / "g.png")))
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], arr)


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode in ("I;16", "I")
    out = _rgb(load_image(tmp_path / "d.png"))
    # v / 65535 * 255 rounded: 0, 1, 128, 255 (a clip at 255 would give 0, 255, 255, 255).
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_mode_i_and_f_images() -> None:
    i_img = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32))
    assert i_img.mode == "I"
    np.testing.assert_array_equal(_rgb(load_image(i_img))[0, :, 1], [0, 255, 255])
    f_img = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert f_img.mode == "F"
    np.testing.assert_array_equal(_rgb(load_image(f_img))[0, :, 2], [0, 128, 255, 255])


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, :, :3] = [200, 100, 50]
    arr[0, :, 3] = [0, 255, 128]
    Image.fromarray(arr).save(tmp_path / "t.png")
    out = _rgb(load_image(tmp_path / "t.png"))
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # fully transparent -> black
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])  # opaque -> unchanged
    np.testing.assert_allclose(out[0, 2], np.array([200, 100, 50]) * 128 / 255, atol=1)


def test_la_composited_on_black() -> None:
    la = Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), mode="LA")
    out = _rgb(load_image(la))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [100, 100, 100]])


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0  # palette index 0 (red) is transparent
    pal.save(tmp_path / "p.png", transparency=0)
    out = _rgb(load_image(tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [0, 255, 0]])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = _rgb(load_image(tmp_path / "c.jpg"))
    r, g, b = out[8, 8]
    assert r > 200 and g < 50 and b < 50, f"cyan-free, magenta+yellow CMYK should be red: {out[8, 8]}"


def test_exif_orientation_6_rotates_pixels(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, top half red, bottom half blue. Orientation 6 =
    # "rotate 90 degrees clockwise to display": shown 20 wide x 40 high, red on the right.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:10] = [255, 0, 0]
    arr[10:] = [0, 0, 255]
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    px = _rgb(out)
    assert px[20, 15, 0] > 200 and px[20, 15, 2] < 60  # right side red
    assert px[20, 4, 2] > 200 and px[20, 4, 0] < 60  # left side blue


@pytest.mark.parametrize(
    ("arr", "expected"),
    [
        (np.full((2, 3), 7, np.uint8), [7, 7, 7]),
        (np.full((2, 3, 1), 9, np.uint8), [9, 9, 9]),
        (np.tile(np.array([1, 2, 3], np.uint8), (2, 3, 1)), [1, 2, 3]),
        (np.tile(np.array([10, 20, 30, 255], np.uint8), (2, 3, 1)), [10, 20, 30]),
        (np.full((2, 3, 3), 65535, np.uint16), [255, 255, 255]),
        (np.full((2, 3), 0.5, np.float32), [128, 128, 128]),
        (np.full((2, 3, 3), 0.2, np.float64), [51, 51, 51]),
    ],
    ids=["u8-hw", "u8-hw1", "u8-rgb", "u8-rgba", "u16", "f32-gray", "f64-rgb"],
)
def test_numpy_inputs(arr: np.ndarray, expected: list[int]) -> None:
    out = load_image(arr)
    assert out.size == (3, 2)
    np.testing.assert_array_equal(_rgb(out)[1, 2], expected)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((2, 3, 2), np.uint8), "expected shape"),
        (np.zeros((2, 3, 3, 1), np.uint8), "expected shape"),
        (np.zeros((0, 3), np.uint8), "empty image"),
        (np.zeros((2, 3), np.int64), "unsupported dtype"),
        (np.full((2, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays(arr: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_image(arr)


def test_unsupported_source_type() -> None:
    with pytest.raises(DataError, match="unsupported image source type"):
        load_image(42)  # type: ignore[arg-type]


def test_pil_input_is_copied() -> None:
    src = Image.new("RGB", (4, 4), (1, 2, 3))
    out = load_image(src)
    out.putpixel((0, 0), (9, 9, 9))
    assert src.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7), (5, 7, 4), (5, 7, 1)])
def test_array_input_does_not_alias_the_array(shape: tuple[int, ...]) -> None:
    """load_image makes no extra copy of an array, yet the image never shares the
    caller's memory: writing to the array afterwards leaves the image as it was."""
    arr = np.full(shape, 200, dtype=np.uint8)
    if len(shape) == 3 and shape[2] == 4:
        arr[..., 3] = 255  # opaque
    img = load_image(arr)
    arr[...] = 7
    assert img.mode == "RGB" and np.asarray(img).min() == 200 == np.asarray(img).max()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, not an image\n", bytes(range(256)) * 4])
def test_not_an_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"x\.jpg: not an image or corrupt \("):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_detected_at_load(tmp_path: Path, fmt: str, keep: float) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="truncated image"):
        load_image(path)


def test_corrupt_png_chunk(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (5, 6, 7)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[40:60] = b"\xff" * 20  # overwrite part of the IDAT chunk (and its CRC check fails)
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.png: (not an image or corrupt|truncated)"):
        load_image(path)


def test_no_torch_import() -> None:
    """runtime/ must stay torch-free (checked in a clean interpreter)."""
    import subprocess

    code = "import sys, runtime.image_io; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_malformed_exif_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "badexif.jpg"
    Image.new("RGB", (8, 4), (200, 10, 10)).save(
        path, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f\x00\x00garbage", quality=95)
    out = load_image(path)
    assert out.size == (8, 4)
    assert _rgb(out)[2, 4, 0] > 150
