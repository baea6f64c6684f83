"""ONNX operators the TensorRT ONNX parser accepts, for TensorRT 10.x and 11.x.

Source (looked up 2026-11-25): onnx/onnx-tensorrt ``docs/operators.md``, the
revision headed "TensorRT 10.15 supports operators in the inclusive range of
opset 9 to opset 24" (the operator support matrix, rows marked ``Y``).
TensorRT 11.x: the same matrix plus the parser additions named in the NVIDIA
TensorRT release notes: ``Swish`` (11.0), ``DFT`` through a cuFFT plugin
(11.2); opset 25 from 11.5 (ONNX 1.22). Older 10.x releases support a subset
(e.g. ``Attention``/``RotaryEmbedding`` are recent): the table is the newest
10.x, so a PASS here is necessary, not sufficient, on an old JetPack.

Restrictions that matter for DETR are kept next to the table; the rest of the
matrix's restriction column is not checked.
"""

from __future__ import annotations

SOURCE = ("onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15, opsets 9-24), "
          "looked up 2026-11-25; TensorRT 11.x = same + Swish (11.0), DFT (11.2), "
          "opset 25 (11.5) per the TensorRT 11 release notes")

# Rows marked "Y" in the TensorRT 10.15 operator support matrix.
_TABLE_10 = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod
Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
_SUPPORTED_10 = frozenset(_TABLE_10.split())

_SUPPORTED_11 = _SUPPORTED_10 | {"Swish", "DFT"}

SUPPORTED_OPS: dict[int, frozenset[str]] = {10: _SUPPORTED_10, 11: frozenset(_SUPPORTED_11)}
MAX_OPSET: dict[int, int] = {10: 24, 11: 25}
MIN_OPSET = 9

# Restrictions from the matrix (and known bugs) that check_onnx verifies.
RESTRICTIONS: dict[str, str] = {
    "CumSum": "computed wrongly on several axes by TensorRT 10.8-10.11 (onnx-tensorrt#1034); "
              "detr-edge graphs must not contain it",
    "QuantizeLinear": "y_zero_point must be 0 (symmetric INT8)",
    "DequantizeLinear": "x_zero_point must be zero (symmetric INT8)",
    "Pad": "pads must be a build-time constant for a static-shape engine",
    "LayerNormalization": "only the first output Y is supported",
}


def supported_ops(trt_major: int) -> frozenset[str]:
    """Default-domain ONNX op types the parser of TensorRT ``trt_major`` accepts."""
    if trt_major not in SUPPORTED_OPS:
        raise ValueError(f"TensorRT major version {trt_major} is not tabulated "
                         f"(known: {sorted(SUPPORTED_OPS)})")
    return SUPPORTED_OPS[trt_major]
