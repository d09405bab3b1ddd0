"""Tiny models written by the project itself, to probe a device and to test every runtime: an ONNX depthwise
conv (onnx helper, no torch), the same as a `.tflite` flatbuffer (LiteRT's own schema module, no converter
needed) and as a torch ExportedProgram (`.pt2`). Weights come from a seeded generator."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_onnx(path: Path, channels: int = 8, size: int = 16, kernel: int = 3, seed: int = 0) -> Path:
    """A depthwise KxK conv plus ReLU on a 1 x C x S x S input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    pad = kernel // 2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=channels, kernel_shape=[kernel, kernel],
                              pads=[pad] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny_dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])], [w, b])
    return _save_onnx(graph, path)


def tiny_tflite(path: Path, channels: int = 8, size: int = 16, kernel: int = 3, seed: int = 0) -> Path:
    """The same depthwise conv (NHWC) plus a constant ADD, as a `.tflite` flatbuffer built with the schema's
    object API from `ai_edge_litert.schema_py_generated` (needs the `litert` extra)."""
    import flatbuffers
    import ai_edge_litert.schema_py_generated as tfl

    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((1, kernel, kernel, channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    const = rng.standard_normal((1, 1, 1, channels)).astype(np.float32)

    def buffer(data=None):
        b = tfl.BufferT()
        if data is not None:
            b.data = np.frombuffer(data.tobytes(), dtype=np.uint8).tolist()
        return b

    def tensor(name, shape, buf):
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), tfl.TensorType.FLOAT32, buf
        return t

    io_shape = (1, size, size, channels)
    tensors = [tensor("x", io_shape, 1), tensor("w", weights.shape, 2), tensor("b", bias.shape, 3),
               tensor("c", io_shape, 4), tensor("k", const.shape, 5), tensor("y", io_shape, 6)]
    buffers = [buffer(), buffer(), buffer(weights), buffer(bias), buffer(), buffer(const), buffer()]

    def opcode(code):
        oc = tfl.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        return oc

    dw_opts = tfl.DepthwiseConv2DOptionsT()
    dw_opts.padding, dw_opts.strideW, dw_opts.strideH, dw_opts.depthMultiplier = tfl.Padding.SAME, 1, 1, 1
    dw_opts.fusedActivationFunction = tfl.ActivationFunctionType.RELU
    dw = tfl.OperatorT()
    dw.opcodeIndex, dw.inputs, dw.outputs = 0, [0, 1, 2], [3]
    dw.builtinOptionsType, dw.builtinOptions = tfl.BuiltinOptions.DepthwiseConv2DOptions, dw_opts
    add = tfl.OperatorT()
    add.opcodeIndex, add.inputs, add.outputs = 1, [3, 4], [5]
    add.builtinOptionsType, add.builtinOptions = tfl.BuiltinOptions.AddOptions, tfl.AddOptionsT()

    sub = tfl.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [0], [5], [dw, add], "main"
    model = tfl.ModelT()
    model.version, model.description = 3, "ofa-bench tiny depthwise conv"
    model.operatorCodes = [opcode(tfl.BuiltinOperator.DEPTHWISE_CONV_2D), opcode(tfl.BuiltinOperator.ADD)]
    model.subgraphs, model.buffers = [sub], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = Path(path)
    path.write_bytes(bytes(builder.Output()))
    return path


def tiny_pt2(path: Path, channels: int = 8, size: int = 16, kernel: int = 3, seed: int = 0) -> Path:
    """The depthwise conv as a torch ExportedProgram (`torch.export.save`), for the torch runtime."""
    import torch

    torch.manual_seed(seed)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels), torch.nn.ReLU()).eval()
    program = torch.export.export(module, (torch.randn(1, channels, size, size),))
    path = Path(path)
    torch.export.save(program, str(path))
    return path


def tiny_model(path_stem: Path, model_format: str, **kw) -> Path:
    """The tiny model in the format a device takes (`onnx`, `tflite`, `pt2`)."""
    makers = {"onnx": tiny_onnx, "tflite": tiny_tflite, "pt2": tiny_pt2}
    return makers[model_format](Path(str(path_stem) + "." + model_format), **kw)


def mbconv_onnx(path: Path, in_channels: int = 40, expand: int = 6, out_channels: int = 40, size: int = 28,
                kernel: int = 3, stride: int = 1, seed: int = 0) -> Path:
    """An MBConv-shaped graph (1x1 expand, ReLU, KxK depthwise, ReLU, 1x1 project) written with the onnx
    helper, no torch: enough structure for the FPGA model's layer fusion and for quick probes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    mid = in_channels * expand

    def weight(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w_expand"], ["e"]), helper.make_node("Relu", ["e"], ["e_act"]),
        helper.make_node("Conv", ["e_act", "w_dw"], ["d"], group=mid, kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[kernel // 2] * 4),
        helper.make_node("Relu", ["d"], ["d_act"]),
        helper.make_node("Conv", ["d_act", "w_project"], ["y"]),
    ]
    inits = [weight("w_expand", (mid, in_channels, 1, 1)), weight("w_dw", (mid, 1, kernel, kernel)),
             weight("w_project", (out_channels, mid, 1, 1))]
    out_size = (size + stride - 1) // stride
    graph = helper.make_graph(
        nodes, f"mbconv_k{kernel}_e{expand}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, out_size, out_size])], inits)
    return _save_onnx(graph, path)


def _save_onnx(graph, path: Path) -> Path:
    """`graph` as a checked opset-17 model (IR version 8, which every supported onnxruntime reads) at `path`."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ofa-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
