"""A SIMULATED FPGA device: an analytic latency model of a CNN accelerator, not a measurement.

The accelerator is a PE array (input-channel x output-channel x output-pixel parallelism) with an on-chip
buffer and a DRAM link. Every layer of an ONNX graph gets a roofline time, max(compute, memory) plus a fixed
per-layer overhead. Depthwise convs run on the array's window engine: each lane holds a native `window` x
`window` multiplier grid (3x3), so a KxK kernel is cut into ceil(K/3)^2 window tiles (5x5 -> 4 passes using
25 of 36 slots, 7x7 -> 9 passes using 49 of 81). Layers are fused through a line buffer of `line_buffer_rows`
rows: the expanded tensor of an MBConv goes from the 1x1 conv straight into the depthwise conv, and the
depthwise output straight into the projecting 1x1 conv, without touching DRAM, but only when the depthwise
kernel fits the line buffer; a taller kernel forces the expanded tensor out to DRAM and back in
ceil(K/rows) row bands. Hence such accelerators favour 3x3 kernels (the OFA paper's observation on ZU9EG and
ZU3EG). Results say `simulated: true`, and the device name says "model".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.errors import ModelFileError
from agents.host import Agent
from agents.measurement import Measurement
from agents.registry import register_agent

MODEL_VERSION = "fpga-model/1"
FUSED = {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "BatchNormalization", "Identity",
         "Dropout"}
FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Constant", "Gather", "Cast", "Transpose",
        "ConstantOfShape", "Slice"}
VECTOR = {"Add", "Mul", "Sub", "Div", "GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool", "Concat"}


@dataclass(frozen=True)
class Accelerator:
    """Parameters of the modelled accelerator (int8 datapath by default)."""

    name: str
    board: str
    clock_mhz: float
    pe_in: int               # input channels per cycle (standard convs)
    pe_out: int              # output channels per cycle (also depthwise channel lanes)
    pe_pixels: int           # output pixels per cycle
    window: int              # native depthwise window (window x window multipliers per lane)
    line_buffer_rows: int    # input rows the line buffer holds
    buffer_kib: int          # on-chip buffer for activations and weights
    dram_gb_s: float         # effective DRAM bandwidth
    vector_lanes: int        # element-wise values per cycle (add, mul, pooling)
    layer_overhead_us: float = 2.0
    bytes_per_value: int = 1

    @property
    def peak_macs_per_s(self) -> float:
        return self.pe_in * self.pe_out * self.pe_pixels * self.clock_mhz * 1e6


BOARDS = {
    # ZCU102-class: 2520 DSPs, ~4 MB of BRAM/URAM; a B4096-like array (2048 MAC/cycle) at 300 MHz, DDR4 64-bit.
    "zu9eg": Accelerator(name="ZU9EG accelerator model", board="Xilinx Zynq UltraScale+ ZU9EG", clock_mhz=300.0,
                         pe_in=16, pe_out=16, pe_pixels=8, window=3, line_buffer_rows=3, buffer_kib=2048,
                         dram_gb_s=19.2, vector_lanes=64),
    # Ultra96-class: 360 DSPs, ~0.9 MB of BRAM; a B1152-like array (576 MAC/cycle) at 250 MHz, LPDDR4 32-bit.
    "zu3eg": Accelerator(name="ZU3EG accelerator model", board="Xilinx Zynq UltraScale+ ZU3EG", clock_mhz=250.0,
                         pe_in=12, pe_out=12, pe_pixels=4, window=3, line_buffer_rows=3, buffer_kib=512,
                         dram_gb_s=8.5, vector_lanes=32),
}


def accelerator_for(profile) -> Accelerator:
    """The board named by the profile's address, with the profile's `[fpga]` keys overriding parameters."""
    board = (profile.address or "zu9eg").lower()
    if board not in BOARDS:
        raise ModelFileError(f"{profile.name}: unknown FPGA board {board!r} (known: {', '.join(sorted(BOARDS))})")
    acc = BOARDS[board]
    overrides = dict(profile.fpga or {})
    known = {f.name for f in dataclasses.fields(Accelerator)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ModelFileError(f"{profile.name}: unknown [fpga] key(s) {', '.join(bad)}")
    return dataclasses.replace(acc, **overrides) if overrides else acc


@dataclass(frozen=True)
class LayerCost:
    name: str
    op: str
    macs: int
    compute_us: float
    memory_us: float
    time_us: float
    utilisation: float  # useful MACs / MAC slots occupied while computing


def conv_cost(acc: Accelerator, name: str, cin: int, cout: int, h_out: int, w_out: int, k_h: int, k_w: int,
              groups: int, h_in: int, w_in: int, input_on_chip: bool = False,
              output_on_chip: bool = False) -> LayerCost:
    """Roofline time of one convolution; `*_on_chip` skip the DRAM traffic of a tensor fused with its neighbour."""
    px = math.ceil(h_out * w_out / acc.pe_pixels)
    reread = 1
    if is_depthwise(cin, cout, groups):  # window engine, one lane per channel and output pixel
        tiles = math.ceil(k_h / acc.window) * math.ceil(k_w / acc.window)
        cycles = math.ceil(cin / acc.pe_out) * px * tiles
        slots = cycles * acc.pe_out * acc.pe_pixels * acc.window * acc.window
        reread = math.ceil(k_h / acc.line_buffer_rows)  # row bands re-streamed when the kernel is taller
        op = "DepthwiseConv"
    else:
        cin_g, cout_g = cin // groups, cout // groups
        cycles = groups * math.ceil(cin_g / acc.pe_in) * math.ceil(cout_g / acc.pe_out) * px * k_h * k_w
        slots = cycles * acc.pe_in * acc.pe_out * acc.pe_pixels
        op = "Conv"
    macs = cout * h_out * w_out * (cin // groups) * k_h * k_w
    b = acc.bytes_per_value
    weight_bytes = cout * (cin // groups) * k_h * k_w * b
    in_bytes = 0 if input_on_chip else cin * h_in * w_in * b
    out_bytes = 0 if output_on_chip else cout * h_out * w_out * b
    # weights larger than half the buffer are tiled, and the input is streamed once per weight tile
    weight_tiles = max(1, math.ceil(weight_bytes / (acc.buffer_kib * 1024 / 2)))
    traffic = in_bytes * max(reread, weight_tiles) + weight_bytes + out_bytes
    compute_us = cycles / acc.clock_mhz
    memory_us = traffic / (acc.dram_gb_s * 1e3)
    return LayerCost(name, op, macs, compute_us, memory_us, max(compute_us, memory_us) + acc.layer_overhead_us,
                     macs / slots if slots else 0.0)


def is_depthwise(cin: int, cout: int, groups: int) -> bool:
    return groups > 1 and groups == cin == cout


def vector_cost(acc: Accelerator, name: str, op: str, in_values: int, out_values: int) -> LayerCost:
    compute_us = math.ceil(in_values / acc.vector_lanes) / acc.clock_mhz
    memory_us = (in_values + out_values) * acc.bytes_per_value / (acc.dram_gb_s * 1e3)
    return LayerCost(name, op, 0, compute_us, memory_us, max(compute_us, memory_us) + acc.layer_overhead_us, 0.0)


def _shapes(model) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1


def estimate(path: Path, acc: Accelerator) -> list[LayerCost]:
    """Per-layer costs of an ONNX model (NCHW) on the accelerator."""
    import onnx

    try:
        model = onnx.load(str(path))
        shapes = _shapes(model)
    except Exception as exc:
        raise ModelFileError(f"cannot read ONNX model {path}: {' '.join(str(exc).split())[:200]}") from None
    inits = {i.name for i in model.graph.initializer}
    convs = {n.output[0]: _conv_geometry(n, shapes, path) for n in model.graph.node if n.op_type == "Conv"}
    on_chip = _fused_tensors(model.graph.node, convs, acc)
    layers = []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type == "Conv":
            g = convs[node.output[0]]
            layers.append(conv_cost(acc, name, g["cin"], g["cout"], g["h_out"], g["w_out"], g["k_h"], g["k_w"],
                                    g["groups"], g["h_in"], g["w_in"], input_on_chip=node.input[0] in on_chip,
                                    output_on_chip=g["out"] in on_chip))
        elif node.op_type in ("Gemm", "MatMul"):
            x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            w = shapes.get(node.input[1])
            if not (x and y and w):
                raise ModelFileError(f"{path}: cannot infer the shapes of {node.op_type} {name}")
            k = x[-1]
            n = y[-1]
            rows = _numel(x) // k
            layers.append(conv_cost(acc, name, k, n, rows, 1, 1, 1, 1, rows, 1))
        elif node.op_type in VECTOR:
            ins = [shapes.get(n) for n in node.input if n and n not in inits]
            out = shapes.get(node.output[0])
            in_values = sum(_numel(s) for s in ins if s)
            layers.append(vector_cost(acc, name, node.op_type, in_values, _numel(out) if out else 0))
        elif node.op_type in FUSED or node.op_type in FREE:
            continue
        else:
            raise ModelFileError(f"{path}: the FPGA model has no cost for operator {node.op_type} ({name})")
    if not layers:
        raise ModelFileError(f"{path}: no layers the FPGA model can cost")
    return layers


def _conv_geometry(node, shapes, path) -> dict[str, int | str]:
    x, w, y = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
    if not (x and w and y) or len(x) != 4 or len(y) != 4:
        raise ModelFileError(f"{path}: cannot infer the shapes of conv {node.name or node.output[0]}")
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    return {"cin": x[1], "cout": y[1], "h_in": x[2], "w_in": x[3], "h_out": y[2], "w_out": y[3], "k_h": w[2],
            "k_w": w[3], "groups": groups, "out": node.output[0]}


def _fused_tensors(nodes, convs, acc: Accelerator) -> set[str]:
    """Tensors that never reach DRAM: a conv's (activated) output whose only consumer is a depthwise conv whose
    kernel fits the line buffer, and a depthwise output whose only consumer is a 1x1 conv."""
    consumers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    fused = set()
    for n in nodes:
        if n.op_type != "Conv":
            continue
        g = convs[n.output[0]]
        out = n.output[0]
        while len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in FUSED:
            out = consumers[out][0].output[0]  # activations run inside the conv's output stage
        g["out"] = out
        users = consumers.get(out, [])
        if len(users) != 1 or users[0].op_type != "Conv":
            continue
        nxt = convs[users[0].output[0]]
        if is_depthwise(nxt["cin"], nxt["cout"], nxt["groups"]):
            if nxt["k_h"] <= acc.line_buffer_rows:
                fused.add(out)
        elif is_depthwise(g["cin"], g["cout"], g["groups"]) and nxt["k_h"] == nxt["k_w"] == 1:
            fused.add(out)
    return fused


def latency_ms(path: Path, acc: Accelerator) -> float:
    return sum(layer.time_us for layer in estimate(path, acc)) / 1000.0


class FpgaAgent(Agent):
    """Plugs the analytic model in as a device: same `measure()` API; each result is the model's single
    deterministic value (n=1, `samples_ms` of one value), flagged `simulated`."""

    needs_transport = False  # the model is the device

    def __init__(self, profile, transport=None):
        super().__init__(profile, None)
        self.accelerator = accelerator_for(profile)

    def fingerprint(self) -> dict[str, Any]:
        acc = self.accelerator
        return {"model": f"{acc.name} (simulated)", "soc": f"{acc.board} (modelled)", "cpu": None,
                "os": None, "arch": "fpga-model", "runtime": "fpga-model", "runtime_version": MODEL_VERSION,
                "runtime_build": dataclasses.asdict(acc), "threads": None, "cores": None, "kind": "fpga",
                "simulated": True}

    def _measure_once(self, models: list[Path], rounds: int) -> list[Measurement]:
        out = []
        for path in models:
            try:
                layers = estimate(path, self.accelerator)
            except ModelFileError as exc:
                raise ModelFileError(f"{self.name}: {exc}") from None
            value = sum(layer.time_us for layer in layers) / 1000.0
            macs = sum(layer.macs for layer in layers)
            env = {"simulated": True, "runtime": "fpga-model", "runtime_version": MODEL_VERSION,
                   "accelerator": self.accelerator.name, "board": self.accelerator.board,
                   "note": "analytic model: one deterministic value, n=1 (not a measurement)",
                   "macs": macs, "layers": len(layers),
                   "memory_bound_layers": sum(layer.memory_us > layer.compute_us for layer in layers)}
            out.append(Measurement(model=str(path), samples_ms=(value,), median_ms=value, p10_ms=value,
                                   p90_ms=value, mean_ms=value, std_ms=0.0, cv=0.0, n=1, env=env))
        return out


register_agent("fpga-model", FpgaAgent, lambda p: p.kind == "fpga",
               serves="an fpga device (simulated: the analytic model)")
