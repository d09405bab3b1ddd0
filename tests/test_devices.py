"""Device profiles, the registry (built-in, user, ad-hoc names) and fingerprints."""

import pytest

from devices import DeviceProfile, DeviceProfileError, UnknownDeviceError, get_device, list_devices, write_user_profile
from devices.fingerprint import complete_fingerprint, fingerprint_id
from devices.registry import BUILTIN_DIR

EXPECTED = {"local-cpu", "android-tcp", "android-usb", "jetson-ssh", "cuda-gpu", "cuda-ort", "fpga-zu9eg-model",
            "fpga-zu3eg-model", "loopback-adb"}


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OFA_BENCH_DEVICES", str(tmp_path / "devs"))
    return tmp_path / "devs"


@pytest.mark.parametrize("path", sorted(BUILTIN_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_builtin_profile_loads_and_round_trips(path):
    p = DeviceProfile.from_toml(path)
    import tomllib

    again = DeviceProfile.from_dict(tomllib.loads(p.to_toml()), source=p.source)
    assert again == p
    if p.kind == "fpga":
        assert p.simulated and "model" in p.name


def test_builtins_and_default(user_dir):
    names = {p.name for p in list_devices()}
    assert EXPECTED <= names
    default = get_device()
    assert default.name == "local-cpu" and default.runtime == "onnxruntime" and default.threads == 1
    assert len(default.cores) == 1
    assert get_device("fpga-zu9eg").name == "fpga-zu9eg-model"  # alias


def test_adhoc_names(user_dir):
    p = get_device("adb:192.168.1.5:5555")
    assert (p.kind, p.address, p.adb_server) == ("adb", "192.168.1.5:5555", False)
    p = get_device("adb:R58M1234ABC")
    assert (p.kind, p.address, p.adb_server) == ("adb", "R58M1234ABC", True)
    p = get_device("ssh:pi@raspberry.local:2222")
    assert (p.kind, p.address) == ("ssh", "pi@raspberry.local:2222")
    assert get_device("ssh:pi@host").address == "pi@host"
    assert get_device("local").kind == "local"


def test_unknown_device_lists_known_ones(user_dir):
    with pytest.raises(UnknownDeviceError) as exc:
        get_device("pixel99")
    text = str(exc.value)
    assert "\n" not in text and "pixel99" in text and "local-cpu" in text and "adb:HOST:PORT" in text


def test_user_profiles_add_and_replace(user_dir):
    write_user_profile(DeviceProfile(name="my-board", kind="ssh", address="me@10.0.0.2", threads=4, cores=(2, 3)))
    mine = get_device("my-board")
    assert mine.threads == 4 and mine.cores == (2, 3) and str(user_dir) in mine.source
    with pytest.raises(DeviceProfileError):
        write_user_profile(DeviceProfile(name="my-board", kind="local"))
    write_user_profile(get_device("local-cpu").replace(threads=2, cores=(0, 1)), force=True)
    assert get_device("local-cpu").threads == 2  # a user profile replaces the built-in of the same name


def test_bad_profiles_are_one_line_errors(user_dir):
    user_dir.mkdir(parents=True)
    (user_dir / "typo.toml").write_text('name = "typo"\nthreds = 2\n')
    with pytest.raises(DeviceProfileError) as exc:
        list_devices()
    assert "threds" in str(exc.value) and "\n" not in str(exc.value)
    (user_dir / "typo.toml").write_text('name = "typo"\nthreads = "two"\n')
    with pytest.raises(DeviceProfileError):
        list_devices()
    (user_dir / "typo.toml").write_text('name = "typo\n')
    with pytest.raises(DeviceProfileError) as exc:
        list_devices()
    assert "TOML" in str(exc.value)
    with pytest.raises(DeviceProfileError):
        DeviceProfile(name="x", kind="adb")  # no address
    with pytest.raises(DeviceProfileError):
        DeviceProfile(name="x", min_runs=10, max_runs=5)


def test_fingerprint_id_stable_and_sensitive():
    fp = {"model": "Pixel 7", "soc": "Tensor G2", "os": "Android 14", "runtime": "litert",
          "runtime_build": {"sha256": "ab" * 32}, "threads": 4}
    reordered = dict(reversed(list(fp.items())))
    assert fingerprint_id(fp) == fingerprint_id(reordered) == fingerprint_id(dict(fp))
    assert len(fingerprint_id(fp)) == 12 and all(c in "0123456789abcdef" for c in fingerprint_id(fp))
    assert fingerprint_id({**fp, "threads": 1}) != fingerprint_id(fp)
    assert fingerprint_id({**fp, "runtime_build": {"sha256": "cd" * 32}}) != fingerprint_id(fp)


def test_complete_fingerprint_adds_profile_settings():
    p = get_device("local-cpu")
    fp = complete_fingerprint({"cpu": "X", "runtime": "onnxruntime", "threads": 9, "python": "3.11"}, p)
    assert fp["threads"] == 1 and fp["cores"] == list(p.cores) and fp["kind"] == "local" and "python" not in fp


def test_local_fingerprint_is_stable_across_connections(tmp_path):
    from agents import connect

    p = get_device("local-cpu").replace(workdir=str(tmp_path))
    with connect(p) as a:
        first = a.fingerprint()
    with connect(p) as b:
        second = b.fingerprint()
    assert first == second and fingerprint_id(first) == fingerprint_id(second)
    assert fingerprint_id(first) != fingerprint_id(complete_fingerprint(first, p.replace(threads=2)))


# ---------------------------------------------------------------- CLI

def _cli(argv, capsys):
    import json

    from bench.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    doc = json.loads(out.out) if rc == 0 and "--json" in argv else None
    return rc, doc, out


def test_cli_list_and_show(user_dir, capsys):
    rc, doc, _ = _cli(["devices", "list", "--json"], capsys)
    assert rc == 0 and EXPECTED <= {d["name"] for d in doc["devices"]}
    assert all(d["simulated"] for d in doc["devices"] if d["kind"] == "fpga")
    rc, doc, _ = _cli(["devices", "show", "zu3eg", "--json"], capsys)
    assert rc == 0 and doc["name"] == "fpga-zu3eg-model"


def test_cli_add_then_list(user_dir, capsys):
    rc, doc, _ = _cli(["devices", "add", "bench-pi", "--kind", "ssh", "--address", "pi@10.1.2.3:2222",
                       "--threads", "4", "--cores", "0,1,2,3", "--json"], capsys)
    assert rc == 0 and doc["written"].endswith("bench-pi.toml")
    assert get_device("bench-pi").cores == (0, 1, 2, 3)
    rc, _, out = _cli(["devices", "add", "bench-pi", "--kind", "ssh", "--address", "pi@x"], capsys)
    assert rc == 2 and "already exists" in out.err and out.err.count("\n") == 1
    rc, _, out = _cli(["devices", "add", "y", "--kind", "ssh", "--cores", "a,b"], capsys)
    assert rc == 2 and out.err.startswith("ofa-bench: error:")


def test_cli_probe_local_and_fpga(user_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OFA_BENCH_CACHE", str(tmp_path / "cache"))
    rc, doc, out = _cli(["devices", "probe", "local-cpu", "--json"], capsys)
    assert rc == 0 and doc["latency_ms"] > 0 and doc["fingerprint"]["runtime"] == "onnxruntime"
    assert doc["fingerprint_id"] == fingerprint_id(doc["fingerprint"]) and not doc["simulated"]
    rc, doc, _ = _cli(["devices", "probe", "fpga-zu9eg", "--json"], capsys)
    assert rc == 0 and doc["simulated"] and doc["n"] == 1
    rc, _, out = _cli(["devices", "probe", "no-such-device"], capsys)
    assert rc == 2 and "known devices" in out.err and "Traceback" not in out.err
