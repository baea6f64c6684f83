"""INT8 explicit quantization (Q/DQ ONNX) of a detr-edge FP32 model.

One file per step: ``quantize`` (entry point: ``quantize_int8``), ``config``
(``QuantizeConfig``), ``calib_data`` (calibration / held-out images and their ONNX
feeds), ``nodes`` (which nodes to quantize, output heads, DETR blocks),
``qdq_insert`` (ONNX Runtime's ``quantize_static`` into one of the two INT8
formats: TensorRT's symmetric int8 or ONNX Runtime's uint8 cpu format),
``stem_space_to_depth`` (the cpu format's exact stem rewrite), ``ort_fusion_layout``
(the TensorRT format laid out so that ONNX Runtime fuses it into integer kernels),
``qdq_check`` (verification of a Q/DQ graph), ``calib_methods`` (calibration
method per block), ``candidate_models`` (the INT8 model of each search
configuration), ``search`` (full INT8, methods, FP32 fallback), ``objective``
(AP, paired bootstrap SE, latency), ``paired_bootstrap``, ``sensitivity``
(per-block output error, held-out evaluation) and ``report``.

Importing this package imports nothing heavy.
"""
