"""The bad-image corpus and fuzz tests of everything that parses input.

- tests/data/bad/image_cases.json lists every file of tests/data/bad/images/ with
  the message it must give, through the runtime loader and the COCO dataset.
- Fuzz (hypothesis): image files (mutated encodings of every supported format),
  preprocessing of arbitrary arrays, decoding of arbitrary model outputs, and the
  model metadata JSON (read from ONNX files and engine headers) must each give a
  result or a ``DetrEdgeError``, never another exception. The COCO reader's fuzz
  tests live in test_coco_data.py.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from runtime.decode import decode
from runtime.errors import DataError, DetrEdgeError, InputError, ModelFormatError
from runtime.image_io import load_image
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess

BAD = Path(__file__).parent / "data" / "bad"
IMAGE_CASES = json.loads((BAD / "image_cases.json").read_text())["cases"]
IDS = [c["file"] for c in IMAGE_CASES]


def test_every_corpus_file_has_a_case() -> None:
    listed = {c["file"] for c in IMAGE_CASES} | {"ok.png"}
    assert {p.name for p in (BAD / "images").iterdir()} == listed


def test_control_image_loads() -> None:
    assert load_image(BAD / "images" / "ok.png").mode == "RGB"


@pytest.mark.parametrize("case", IMAGE_CASES, ids=IDS)
def test_corpus_through_the_runtime_loader(case: dict[str, str]) -> None:
    path = BAD / "images" / case["file"]
    with pytest.raises(DataError) as info:
        load_image(path)
    assert info.value.where == str(path)
    assert re.search(case["match"], info.value.problem), info.value.problem
    assert "\n" not in str(info.value)  # one line on the CLI


@pytest.mark.parametrize("case", IMAGE_CASES, ids=IDS)
def test_corpus_through_the_coco_dataset(case: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from detr.data.coco import CocoDetection

    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 7, "file_name": case["file"], "height": 32, "width": 48}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "thing"}]}))
    dataset = CocoDetection(BAD / "images", ann)
    with pytest.raises(DataError) as info:
        dataset[0]
    message = str(info.value)
    assert message.startswith(f"{ann}: image 7 ({case['file']}): "), message
    assert re.search(case["match"], message) and "\n" not in message


# ---- fuzz: image files ---------------------------------------------------------------------

def _encodings() -> dict[str, bytes]:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        out[fmt] = buf.getvalue()
    return out


_ENCODED = _encodings()


def _load_bytes(raw: bytes, suffix: str) -> None:
    """load_image on a file holding ``raw``: an RGB image or a one-line DataError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{suffix}"
        path.write_bytes(raw)
        try:
            image = load_image(path)
        except DataError as exc:
            assert exc.where == str(path) and "\n" not in exc.problem
        else:
            assert image.mode == "RGB" and image.width > 0 and image.height > 0


# PIL warns about corrupt EXIF and short TIFF reads; loading goes on, which is the point.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(_ENCODED)), data=st.data())
def test_fuzz_mutated_image_files(fmt: str, data: st.DataObject) -> None:
    """Cut, overwrite or insert bytes anywhere in a valid file: load or DataError."""
    raw = bytearray(_ENCODED[fmt])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw)))
        how = data.draw(st.sampled_from(["cut", "overwrite", "insert"]))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        if how == "cut":
            raw = raw[:pos]
        elif how == "overwrite":
            raw[pos:pos + len(chunk)] = chunk
        else:
            raw[pos:pos] = chunk
    _load_bytes(bytes(raw), fmt.lower())


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=64))
def test_fuzz_random_bytes(blob: bytes) -> None:
    _load_bytes(blob, "jpg")


# ---- fuzz: preprocessing -------------------------------------------------------------------

_META = ModelMeta(preset="t", input_height=24, input_width=32, class_names=["a"], label_map=[1])
_dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32,
                           np.float64, np.bool_])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9)))
def test_fuzz_preprocess_arrays(array: np.ndarray) -> None:
    """Any numpy array (dtype, shape, NaN/inf values): a valid batch or a DetrEdgeError."""
    try:
        batch = preprocess([array], _META)
    except DetrEdgeError:
        return
    assert batch.images.shape == (1, 3, 24, 32) and np.isfinite(batch.images).all()
    assert batch.orig_sizes[0].tolist() == list(array.shape[:2])


# ---- fuzz: decoding ------------------------------------------------------------------------

_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), B=st.integers(1, 2), Q=st.integers(0, 5), K=st.integers(1, 3),
       second_best=st.booleans(), threshold=st.floats(0, 1), top_k=st.none() | st.integers(0, 4))
def test_fuzz_decode_any_model_output(data: st.DataObject, B: int, Q: int, K: int,
                                      second_best: bool, threshold: float,
                                      top_k: int | None) -> None:
    """NaN/inf/huge logits and boxes (a broken FP16 engine) never give a NaN score or
    a non-finite box: those slots are dropped."""
    logits = data.draw(hnp.arrays(np.float32, (B, Q, K + 1), elements=_floats))
    boxes = data.draw(hnp.arrays(np.float32, (B, Q, 4), elements=_floats))
    sizes = data.draw(hnp.arrays(np.int64, (B, 2), elements=st.integers(1, 5000)))
    dets = decode(logits, boxes, sizes, second_best=second_best, score_threshold=threshold,
                  top_k=top_k)
    assert len(dets) == B
    for det in dets:
        assert np.isfinite(det.scores).all() and np.isfinite(det.boxes).all()
        assert ((det.scores >= threshold) & (det.scores <= 1)).all()
        assert det.boxes.shape == (len(det), 4) and det.labels.max(initial=0) < K
        assert top_k is None or len(det) <= top_k
        json.dumps(det.boxes.tolist(), allow_nan=False)  # valid COCO JSON


@pytest.mark.parametrize("sizes", [[[np.nan, 4.0]], [[-1, 4]], [["a", "b"]]])
def test_decode_rejects_bad_target_sizes(sizes: Any) -> None:
    with pytest.raises(InputError, match="target_sizes"):
        decode(np.zeros((1, 2, 3), np.float32), np.full((1, 2, 4), 0.5, np.float32),
               np.array(sizes))


# ---- fuzz: model metadata (ONNX metadata_props, engine headers) -----------------------------

_GOOD = json.loads(ModelMeta(preset="detr-tiny", input_height=64, input_width=96,
                             class_names=["a", "b"], label_map=[3, 9]).to_json())
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10 ** 30), 10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=3),
    max_leaves=8)


def _parse_or_reject(text: str) -> None:
    try:
        meta = ModelMeta.from_json(text, source="m.onnx")
    except ModelFormatError as exc:
        assert exc.where == "m.onnx"
        return
    # Accepted: every field has the type the runtime relies on.
    assert isinstance(meta.input_height, int) and meta.input_height > 0
    assert all(isinstance(n, str) for n in meta.class_names)
    assert len(meta.label_map) == meta.num_classes
    assert all(math.isfinite(v) for v in (*meta.mean, *meta.std))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(_GOOD) + ["decoding.top_k", "decoding.score_threshold",
                                            "decoding.second_best", "unknown"]),
       value=_json_value, drop=st.booleans())
def test_fuzz_metadata_field(key: str, value: Any, drop: bool) -> None:
    doc = json.loads(json.dumps(_GOOD))
    target, name = (doc["decoding"], key.split(".", 1)[1]) if "." in key else (doc, key)
    if drop:
        target.pop(name, None)
    else:
        target[name] = value
    _parse_or_reject(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(_json_value)
def test_fuzz_metadata_document(doc: Any) -> None:
    _parse_or_reject(json.dumps(doc))
    if isinstance(doc, dict):
        _parse_or_reject(json.dumps({**doc, "format_version": 1}))


def test_metadata_is_data_only() -> None:
    """Code-like strings stay strings: metadata is json.loads, never evaluated."""
    doc = dict(_GOOD, preset="__import__('os').system('touch pwned')",
               extra={"!!python/object": "os.system"})
    meta = ModelMeta.from_json(json.dumps(doc))
    assert meta.preset.startswith("__import__") and meta.extra == doc["extra"]
