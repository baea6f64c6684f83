"""Every input is validated at its trust boundary (property-based).

Hypothesis generates structurally valid but semantically wrong inputs at each
boundary: checkpoint dicts (own and official format, HF config.json), ONNX
metadata documents, COCO annotation files and option values. Every one must
end the command with exit code 2 and exactly one stderr line that names the
file or option, without a traceback, while the process runs under a memory
cap (RLIMIT_AS: what is in use plus 3 GiB), so an input that makes a command
allocate without bound fails the test instead of the machine.
Odd files, output folders and multi-line errors: test_odd_inputs.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cli_checks import BAD_IMAGES, capped_cli, refused_capped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")



def fast(examples: int) -> settings:
    """Few, reproducible examples: each one runs a command (the suite must stay fast)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


# ---- fixtures (module scope: hypothesis runs many examples per test) ----------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trust")


@pytest.fixture(scope="module")
def own_checkpoint(shapes_checkpoint: Path) -> dict[str, Any]:
    """A valid own-format checkpoint dict (the 6 classes of the small dataset)."""
    return torch.load(shapes_checkpoint, weights_only=True)


# ---- checkpoints -------------------------------------------------------------------------

def test_checkpoint_controls_load(own_checkpoint: dict[str, Any], work: Path) -> None:
    """The unmutated own and official checkpoints load: the refusals below are the
    mutations' doing."""
    import detr

    classes = len(own_checkpoint["class_names"])
    assert detr.load_checkpoint(_save(own_checkpoint, work / "own")).num_classes == classes
    official = detr.load_checkpoint(_save({"model": own_checkpoint["model"]}, work / "off"))
    assert official.source_format == "official" and official.num_classes == classes


_sizes = ["hidden_dim", "nheads", "dec_layers", "dim_feedforward", "num_queries"]
_bad_int = (st.integers(max_value=0) | st.integers(10 ** 6, 10 ** 12)
            | st.integers(1, 64).map(str) | st.floats(allow_nan=True) | st.none() | st.booleans())
_config_mutations = st.one_of(
    st.tuples(st.sampled_from(_sizes), _bad_int),
    st.tuples(st.just("enc_layers"), st.integers(max_value=-1) | st.integers(65, 10 ** 9)
              | st.text(max_size=3)),
    st.tuples(st.just("dropout"), st.floats().filter(lambda x: not 0 <= x < 1) | st.text()),
    st.tuples(st.just("temperature"), st.floats(max_value=0) | st.just("10000")),
    st.tuples(st.sampled_from(["dilation", "aux_loss", "pre_norm"]), st.sampled_from(
        ["yes", 1, 0, None])),
    st.tuples(st.just("backbone"), st.sampled_from(["resnet9", 50, None, ""])),
)


def _tensor_mutation(value: Any, how: str) -> Any:
    if how == "int":
        return value.to(torch.int64)
    if how == "bool":
        return value > 0
    if how == "nan":
        return torch.full_like(value, float("nan"))
    if how == "inf":
        out = value.clone()
        out.view(-1)[0] = float("inf")
        return out
    if how == "rank":
        return value.reshape(-1) if value.dim() > 1 else value.unsqueeze(0)
    return {"string": "weights", "none": None, "scalar": 0.5}[how]


def _save(obj: Any, folder: Path, name: str = "c.pth") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(obj, path)
    return path


def _export_refuses(path: Path) -> None:
    refused_capped(["export-onnx", "--checkpoint", str(path), "--out", str(path.parent / "m.onnx"),
             "--height", "64", "--width", "64"], "c\\.pth: ")
    assert not (path.parent / "m.onnx").exists()


@fast(25)
@given(mutation=_config_mutations)
def test_own_checkpoint_config_fields(own_checkpoint: dict[str, Any], mutation: tuple[str, Any],
                                      work: Path) -> None:
    field, value = mutation
    raw = {**own_checkpoint, "config": {**own_checkpoint["config"], field: value}}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        _export_refuses(_save(raw, Path(tmp)))


_KEYS = st.sampled_from(["query_embed.weight", "class_embed.weight", "class_embed.bias",
                         "input_proj.weight", "backbone.0.body.conv1.weight",
                         "transformer.encoder.layers.0.linear1.weight",
                         "bbox_embed.layers.2.bias"])
_HOW = st.sampled_from(["int", "bool", "nan", "inf", "rank", "string", "none", "scalar"])


@fast(25)
@given(key=_KEYS, how=_HOW, official=st.booleans())
def test_checkpoint_tensors(own_checkpoint: dict[str, Any], key: str, how: str, official: bool,
                            work: Path) -> None:
    """Own and official format: a wrong-typed, non-finite or reshaped weight is refused."""
    state = dict(own_checkpoint["model"])
    state[key] = _tensor_mutation(state[key], how)
    raw = {**own_checkpoint, "model": state} if not official else {"model": state}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        _export_refuses(_save(raw, Path(tmp)))


_other_fields = st.one_of(
    st.tuples(st.just("num_classes"), _bad_int | st.just(2) | st.just(4)),
    st.tuples(st.just("label_map"), st.sampled_from([[1, 2], [2 ** 63, 2, 3], ["1", "2", "3"],
                                                     [1.0, 2.0, 3.0], "123"])),
    st.tuples(st.just("class_names"), st.sampled_from([["a"], [1, 2, 3], "abc", None])),
    st.tuples(st.just("train_config"), st.sampled_from([
        {"eval_size": "128"}, {"max_size": -5}, {"scales": ["96", "128"]}, {"scales": []},
        {"eval_size": 10 ** 6}, {"model_overrides": [1]}, {"preset": 5}, {"batch_size": "2"},
        "not a dict"])),
    st.tuples(st.just("training_resize"), st.sampled_from([
        {"shorter": -5, "max_size": 64, "padded": False}, {"shorter": 64, "max_size": 10 ** 6,
                                                           "padded": True},
        {"shorter": "64", "max_size": 64, "padded": False}, {"shorter": 64, "max_size": 64},
        [64, 64]])),
)


@fast(20)
@given(mutation=_other_fields)
def test_own_checkpoint_other_fields(own_checkpoint: dict[str, Any], mutation: tuple[str, Any],
                                     work: Path) -> None:
    field, value = mutation
    raw = {**own_checkpoint, field: value}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        _export_refuses(_save(raw, Path(tmp)))


_hf_config = st.sampled_from([
    {"id2label": {"zero": "a", "one": "b", "two": "c"}},
    {"id2label": {"²": "a"}}, {"id2label": {"0": 5}}, {"id2label": ["a", "b", "c"]},
    {"encoder_attention_heads": "8"}, {"encoder_attention_heads": -1},
    {"encoder_attention_heads": 10 ** 6}, {"dropout": 7}, {"dropout": "0.1"},
    {"dilation": "yes"}])


@fast(10)
@given(fields=_hf_config)
def test_hf_config_json(own_checkpoint: dict[str, Any], fields: dict[str, Any],
                        work: Path) -> None:
    """An official-format file next to a DETR config.json: the config is checked too."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        path = _save({"model": own_checkpoint["model"]}, Path(tmp))
        (Path(tmp) / "config.json").write_text(json.dumps({"model_type": "detr", **fields}))
        refused_capped(["export-onnx", "--checkpoint", str(path), "--out", str(Path(tmp) / "m.onnx"),
                 "--height", "64", "--width", "64"], "config\\.json: ")


@fast(8)
@given(args=st.fixed_dictionaries({}, optional={
    "nheads": st.sampled_from(["8", -8, 0, 10 ** 6, 2.5]),
    "dropout": st.sampled_from([1.5, -0.1, "0.1"]),
    "dilation": st.sampled_from(["false", 2]),
}).filter(bool))
def test_official_args(own_checkpoint: dict[str, Any], args: dict[str, Any],
                       work: Path) -> None:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        raw = {"model": own_checkpoint["model"], "args": argparse.Namespace(**args)}
        _export_refuses(_save(raw, Path(tmp)))


# ---- ONNX metadata -----------------------------------------------------------------------

_NESTED = "[" * 5000 + "]" * 5000  # json.loads alone: RecursionError
_meta_mutations = st.one_of(
    st.tuples(st.sampled_from(["input_height", "input_width"]),
              st.integers(max_value=0) | st.integers(4097, 10 ** 9) | st.just("64")
              | st.just(64.5)),
    st.tuples(st.just("class_names"), st.sampled_from(
        [[], ["a"], ["a", "b"], ["a", "b", "c", "d"], [1, 2, 3], "abc"])),
    st.tuples(st.just("label_map"), st.sampled_from(
        [[2 ** 63, 7, 11], [-(2 ** 63) - 1, 7, 11], ["3", "7", "11"], [3.5, 7, 11], [3, 7]])),
    st.tuples(st.just("std"), st.sampled_from(
        [[1e-320, 0.2, 0.2], [0.0, 0.2, 0.2], [-0.2, 0.2, 0.2], [1e-9, 1, 1], [0.2, 0.2],
         ["0.2", 0.2, 0.2]])),
    st.tuples(st.just("mean"), st.sampled_from([[float("inf"), 0, 0], [float("nan")] * 3])),
    st.tuples(st.just("batch_size"), st.sampled_from([0, -1, 10 ** 6, "1"])),
    st.tuples(st.just("precision"), st.sampled_from(["int4", 5, None])),
    st.tuples(st.just("format_version"), st.sampled_from([2, "1", None])),
    st.tuples(st.just("extra"), st.sampled_from(["<deep>", "<digits>", "<deep65>"])),
    st.tuples(st.just("decoding"), st.sampled_from(
        [{"score_threshold": "0.5"}, {"top_k": -1}, {"second_best": "no"}])),
)


def _onnx_with_metadata(folder: Path, field: str, value: Any) -> Path:
    from tiny_onnx import make_tiny_onnx, tiny_meta

    from runtime.metadata import METADATA_KEY

    path = make_tiny_onnx(folder / "m.onnx", tiny_meta())
    doc = json.loads(tiny_meta().to_json())
    doc[field] = value
    text = json.dumps(doc)  # NaN / Infinity literals for the non-finite cases
    for marker, raw in (("<deep>", _NESTED), ("<digits>", "1" * 5000),
                        ("<deep65>", "[" * 65 + "]" * 65)):
        text = text.replace(json.dumps(marker), raw)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = text
    onnx.save(model, str(path))
    return path


@fast(40)
@given(mutation=_meta_mutations)
def test_onnx_metadata(mutation: tuple[str, Any], work: Path) -> None:
    """Wrong types, out-of-range values, classes that disagree with the graph's logits,
    deep or huge JSON: predict names the model file and writes nothing."""
    pytest.importorskip("onnxruntime")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        model = _onnx_with_metadata(Path(tmp), *mutation)
        refused_capped(["predict", "--model", str(model), "--images", str(BAD_IMAGES / "ok.png"),
                 "--out", str(Path(tmp) / "out")], "m\\.onnx: ")
        assert not (Path(tmp) / "out" / "predictions.json").exists()


def test_onnx_metadata_control_passes(work: Path) -> None:
    """The unmutated model predicts: the refusals above are the mutations' doing."""
    pytest.importorskip("onnxruntime")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        model = _onnx_with_metadata(Path(tmp), "extra", {"ok": 1})
        code, err = capped_cli(["predict", "--model", str(model), "--images",
                         str(BAD_IMAGES / "ok.png"), "--out", str(Path(tmp) / "out")])
        assert code == 0, err


# ---- COCO annotation files ---------------------------------------------------------------

def _coco_mutation(doc: dict[str, Any], how: str) -> str | dict[str, Any]:
    if how == "category_id_beyond_int64":
        cat = doc["categories"][0]["id"]
        doc["categories"][0]["id"] = 2 ** 63
        for ann in doc["annotations"]:
            if ann["category_id"] == cat:
                ann["category_id"] = 2 ** 63
    elif how == "image_id_huge":
        doc["images"][0]["id"] = -(2 ** 64)
    elif how == "no_annotations":
        doc["annotations"] = []
    elif how == "crowd_only":
        for ann in doc["annotations"]:
            ann["iscrowd"] = 1
    elif how in ("deep", "digits"):
        text = json.dumps({**doc, "info": "<x>"})
        return text.replace('"<x>"', _NESTED if how == "deep" else "9" * 5000)
    elif how == "bbox_strings":
        doc["annotations"][0]["bbox"] = ["1", "2", "3", "4"]
    return doc


@fast(12)
@given(how=st.sampled_from(["category_id_beyond_int64", "image_id_huge", "no_annotations",
                            "crowd_only", "deep", "digits", "bbox_strings"]))
def test_coco_annotation_files(own_checkpoint: dict[str, Any], shapes_dataset: Path,
                               how: str, work: Path) -> None:
    pytest.importorskip("pycocotools")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(shapes_dataset, data)
        ann = data / "annotations" / "instances_val.json"
        mutated = _coco_mutation(json.loads(ann.read_text()), how)
        ann.write_text(mutated if isinstance(mutated, str) else json.dumps(mutated))
        checkpoint = _save(own_checkpoint, Path(tmp))
        refused_capped(["eval", "--checkpoint", str(checkpoint), "--data", str(data),
                 "--size", "64", "64"], "instances_val\\.json: ")


# ---- option values -----------------------------------------------------------------------

_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "probability": st.floats().filter(lambda x: not 0 <= x <= 1),
    "side": st.integers(max_value=0) | st.integers(4097, 10 ** 12),
    "batch": st.integers(max_value=0) | st.integers(1025, 10 ** 9),
    "count": st.integers(max_value=0) | st.integers(10 ** 7 + 1, 10 ** 15),
    "count0": st.integers(max_value=-1) | st.integers(10 ** 7 + 1, 10 ** 15),
    "percentile": st.floats().filter(lambda x: not 0 < x <= 100),
    "non_negative": st.floats().filter(lambda x: not 0 <= x < float("inf")),
    "threads": st.integers(max_value=-1) | st.integers(1025, 10 ** 6),
    "seed": st.integers(max_value=-1) | st.integers(2 ** 32, 2 ** 70),
    "pixels": st.integers(max_value=0) | st.integers(10 ** 12 + 1, 10 ** 20),
}
_BASE = {
    "predict": ["--model", "m.onnx", "--images", "x.png", "--out", "o"],
    "eval": ["--checkpoint", "c.pth", "--data", "d"],
    "train": ["--data", "d", "--out", "o"],
    "export-onnx": ["--checkpoint", "c.pth", "--out", "o.onnx", "--height", "64", "--width", "64"],
    "quantize": ["--onnx", "m.onnx", "--calib-data", "d", "--out", "o.onnx"],
    "check-onnx": ["m.onnx"],
    "benchmark": ["--checkpoint", "c.pth", "--data", "d"],
    "bundle": ["--artifacts", "a", "--data", "d", "--out", "o"],
    "pipeline": [],
    "pretrain-backbone": ["--data", "d", "--out", "o.pth"],
    "make-dataset": ["shapes", "--out", "o"],
}
_OPTIONS = [
    ("predict", "--threshold", "probability"), ("predict", "--batch-size", "batch"),
    ("predict", "--top-k", "count0"), ("predict", "--max-pixels", "pixels"),
    ("eval", "--batch-size", "batch"), ("eval", "--max-images", "count"),
    ("eval", "--size", "side"), ("train", "--eval-size", "side"),
    ("train", "--max-size", "side"), ("train", "--scales", "side"),
    ("train", "--epochs", "count"), ("train", "--lr", "non_negative"),
    ("train", "--seed", "seed"), ("train", "--num-workers", "threads"),
    ("export-onnx", "--height", "side"), ("export-onnx", "--width", "side"),
    ("export-onnx", "--batch", "batch"), ("quantize", "--percentile", "percentile"),
    ("quantize", "--ap-budget", "non_negative"), ("quantize", "--threads", "threads"),
    ("quantize", "--calib-images", "count"), ("check-onnx", "--num-inputs", "count"),
    ("benchmark", "--threads", "threads"), ("benchmark", "--runs", "count"),
    ("benchmark", "--height", "side"), ("pipeline", "--train-minutes", "non_negative"),
    ("bundle", "--images", "count0"), ("bundle", "--calib-images", "count0"),
    ("bundle", "--seed", "seed"),
    ("pretrain-backbone", "--image-size", "side"), ("make-dataset", "--image-size", "side"),
    ("make-dataset", "--num-val", "count0"),
]


@fast(120)
@given(data=st.data(), case=st.sampled_from(_OPTIONS))
def test_option_values(data: st.DataObject, case: tuple[str, str, str]) -> None:
    """Out of range, NaN/inf, huge: one line naming the option as typed, before any work."""
    command, option, kind = case
    value = data.draw(_KINDS[kind])
    typed = [f"{option}={value}"] if option != "--size" else [option, "64", str(value)]
    line = refused_capped([command, *_BASE[command], *typed], f"^detr-edge {command}: error: {option}: ")
    assert "must be" in line
