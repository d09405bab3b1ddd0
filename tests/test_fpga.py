"""The SIMULATED FPGA device: an analytic accelerator model. It must grow with work, favour 3x3 depthwise
kernels, say it is a model, and plug in through the same connect()/measure() API."""
import pytest

from agents import ModelFileError, connect
from agents.sim.fpga import BOARDS, conv_cost, estimate, latency_ms
from agents.tiny_models import mbconv_onnx, tiny_onnx
from devices import get_device


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fpga")


def _per_mac(path, acc, op=None):
    layers = [layer for layer in estimate(path, acc) if op is None or layer.op == op]
    return sum(layer.time_us - acc.layer_overhead_us for layer in layers) / sum(layer.macs for layer in layers)


@pytest.mark.parametrize("board", sorted(BOARDS))
@pytest.mark.parametrize("size,channels", [(56, 24), (28, 40), (14, 112), (7, 160)])
def test_favours_3x3_depthwise(board, size, channels, folder):
    acc = BOARDS[board]
    dw = {k: _per_mac(mbconv_onnx(folder / f"mb{board}{size}k{k}.onnx", channels, 6, channels, size, k), acc,
                      "DepthwiseConv") for k in (3, 5, 7)}
    assert dw[5] > 1.3 * dw[3] and dw[7] > 1.3 * dw[3]  # clearly more per MAC than a 3x3
    block = {k: _per_mac(folder / f"mb{board}{size}k{k}.onnx", acc) for k in (3, 5, 7)}
    assert block[3] < block[5] < block[7]  # and the whole MBConv block too


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_monotonic_in_work(board, folder):
    acc = BOARDS[board]
    base = latency_ms(mbconv_onnx(folder / "w0.onnx", 40, 3, 40, 28, 3), acc)
    assert latency_ms(mbconv_onnx(folder / "w1.onnx", 40, 6, 40, 28, 3), acc) > base  # wider middle
    assert latency_ms(mbconv_onnx(folder / "w2.onnx", 40, 3, 40, 56, 3), acc) > base  # larger input
    assert latency_ms(mbconv_onnx(folder / "w3.onnx", 40, 3, 80, 28, 3), acc) > base  # more outputs
    assert latency_ms(mbconv_onnx(folder / "w4.onnx", 40, 3, 40, 28, 5), acc) > base  # larger kernel
    previous = 0.0
    for channels in (8, 32, 128, 512):
        cost = conv_cost(acc, "c", channels, channels, 28, 28, 3, 3, 1, 28, 28).time_us
        assert cost > previous
        previous = cost


def test_smaller_board_is_slower(folder):
    path = mbconv_onnx(folder / "cmp.onnx")
    assert latency_ms(path, BOARDS["zu3eg"]) > latency_ms(path, BOARDS["zu9eg"])


def test_agent_says_it_is_a_model(folder):
    path = mbconv_onnx(folder / "agent.onnx")
    profile = get_device("fpga-zu9eg")
    assert "model" in profile.name and profile.simulated
    with connect(profile) as agent:
        fp = agent.fingerprint()
        ms = agent.measure([path, tiny_onnx(folder / "tiny.onnx")], rounds=3)
        again = agent.measure([path])
    assert fp["simulated"] is True and "model" in fp["model"] and fp["runtime"] == "fpga-model"
    m = ms[0]
    assert m.n == 1 and m.samples_ms == (m.median_ms,) and m.std_ms == 0.0 and not m.noisy
    assert m.env["simulated"] is True and "n=1" in m.env["note"] and m.env["macs"] > 0
    assert again[0].median_ms == m.median_ms  # deterministic
    assert m.median_ms == pytest.approx(latency_ms(path, BOARDS["zu9eg"]))


def test_overrides_and_bad_models(folder):
    path = mbconv_onnx(folder / "ov.onnx")
    slow = get_device("fpga-zu9eg").replace(fpga={"dram_gb_s": 1.0, "clock_mhz": 100.0})
    with connect(slow) as a, connect(get_device("fpga-zu9eg")) as b:
        assert a.measure([path])[0].median_ms > b.measure([path])[0].median_ms
    with pytest.raises(ModelFileError, match="unknown"):
        connect(get_device("fpga-zu9eg").replace(fpga={"warp_drive": 1}))
    corrupt = folder / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage" * 20)
    with connect(get_device("fpga-zu3eg")) as agent, pytest.raises(ModelFileError) as exc:
        agent.measure([corrupt])
    assert "fpga-zu3eg-model" in str(exc.value) and "corrupt.onnx" in str(exc.value)
