"""runtime.lazy: the one lazy ``__getattr__`` of the package ``__init__`` files."""

import subprocess
import sys

import pytest

import detr
import export
import runtime
import runtime.stream


def test_public_names_resolve_to_their_modules():
    assert runtime.Detector.__module__ == "runtime.detector"
    assert runtime.stream.StreamConfig.__module__ == "runtime.stream.config"
    assert export.QuantizeConfig.__module__ == "export.int8.config"
    assert detr.box_iou.__module__ == "detr.box_ops"


def test_value_is_cached_in_the_package():
    value = export.QuantizeConfig
    assert export.__dict__["QuantizeConfig"] is value


@pytest.mark.parametrize("package", [detr, export, runtime, runtime.stream])
def test_unknown_name_is_an_attribute_error_naming_the_package(package):
    with pytest.raises(AttributeError, match=f"module '{package.__name__}' has no attribute 'nope'"):
        package.nope  # noqa: B018


def test_importing_a_package_imports_none_of_its_heavy_modules():
    code = ("import sys, detr, export, detr.train, detr.data, runtime, runtime.stream; "
            "heavy = {'torch', 'onnx', 'onnxruntime', 'av'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
