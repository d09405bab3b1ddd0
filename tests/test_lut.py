"""Lookup tables: the official Note10 tables import, export byte-equivalent numbers, and predict hand sums;
corrupt tables and bad stores give one-line errors and write nothing."""
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.table import LatencyPredictor, LutError, import_table, load_device_table, subnet_keys
from bench.table.files import read_yaml_dir
from ofa_core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
W12 = SearchSpace.get("ofa-mbv3-w1.2")


@pytest.fixture()
def note10_dir(anchors_dir):
    return anchors_dir / "ofa-mbv3-w12-note10" / "latency_table_note10"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def test_note10_import_export_roundtrip(tmp_path, note10_dir):
    store = tmp_path / "s.sqlite"
    r = cli("lut", "import", "note10", note10_dir, "--space", "ofa-mbv3-w1.2", "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = cli("lut", "export", "note10", "--space", "ofa-mbv3-w1.2", "--format", "yaml", "--out", out,
            "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    src = sorted(p.name for p in note10_dir.glob("*_lookup_table.yaml"))
    assert sorted(p.name for p in out.glob("*.yaml")) == src
    for name in src:
        a = yaml.safe_load((note10_dir / name).read_text())
        b = yaml.safe_load((out / name).read_text())
        assert a == b  # same keys, the very same float values, counts and stds


@pytest.mark.parametrize("fmt,suffix", [("parquet", ".parquet"), ("csv", ".csv")])
def test_frame_roundtrip(tmp_path, note10_dir, fmt, suffix):
    from bench.store import open_store

    with open_store(tmp_path / "a.sqlite") as st:
        import_table(st, "note10", W12, note10_dir)
        table = load_device_table("note10", W12, st)
    from bench.table import export_table
    from bench.table.files import read_table_source

    (path,) = export_table(table, fmt, tmp_path / f"t{suffix}")
    back = read_table_source(path)
    assert set(back) == set(table.entries)
    for k, st in table.entries.items():
        assert back[k].latency_ms == st.latency_ms and back[k].std_ms == st.std_ms and back[k].count == st.count


def test_imported_predicts_hand_sum(tmp_path, note10_dir):
    from bench.store import open_store

    with open_store(tmp_path / "s.sqlite") as st:
        import_table(st, "note10", W12, note10_dir)
        table = load_device_table("note10", W12, st)
    assert table.fingerprint_id != "anchors" and table.source == "store"
    pred = LatencyPredictor.from_table(table, W12)
    assert pred.calibration.is_identity
    raw = {r: yaml.safe_load(p.read_text()) for p in note10_dir.glob("*.yaml") for r in [int(p.name.split("_")[0])]}
    for cfg in W12.sample(np.random.default_rng(0), 25, list(range(160, 225, 4))):
        by_hand = sum(raw[cfg.r][k]["mean"] for k in subnet_keys(W12, cfg))
        assert pred([cfg])[0] == pytest.approx(by_hand, rel=1e-12)


def test_anchor_fallback_without_store(tmp_path, note10_dir):
    table = load_device_table("note10", "ofa-mbv3-w1.2", str(tmp_path / "missing.sqlite"))
    assert table.fingerprint_id == "anchors" and len(table.entries) == 17 * 96
    assert not (tmp_path / "missing.sqlite").exists()  # reading never creates a store


def test_predict_cli_on_anchors(note10_dir, tmp_path):
    import json

    from bench.store import open_store

    open_store(tmp_path / "empty.sqlite").close()  # no tables: the published anchors answer
    r = cli("predict", "--device", "note10", "--space", "ofa-mbv3-w1.2", "--config", "largest", "--json",
            "--store", tmp_path / "empty.sqlite")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["table_sum_ms"] == doc["latency_ms"] > 0 and doc["table_version"].startswith("anchors-")


def _copy_tables(src, dst, n=2):
    dst.mkdir()
    for p in sorted(src.glob("*.yaml"))[:n]:
        shutil.copy(p, dst / p.name)
    return dst


@pytest.mark.parametrize("damage", [
    lambda t: t[: len(t) // 2] + "\n  mean: [unclosed\n",       # YAML syntax error
    lambda t: t.replace("mean: 0.", "mean: x0.", 1),              # a non-number
    lambda t: "just a string\n",                                   # not a mapping
    lambda t: t.replace("Conv-input", "Bogus-input", 1),          # a key of no space
])
def test_corrupt_yaml_one_line_nothing_written(tmp_path, note10_dir, damage):
    bad = _copy_tables(note10_dir, tmp_path / "bad")
    victim = sorted(bad.glob("*.yaml"))[1]
    victim.write_text(damage(victim.read_text()))
    store = tmp_path / "s.sqlite"
    r = cli("lut", "import", "note10", bad, "--space", "ofa-mbv3-w1.2", "--store", store)
    assert r.returncode != 0
    assert r.stderr.startswith("ofa-bench: error:") and r.stderr.count("\n") == 1, r.stderr
    assert not store.exists()


def test_import_into_existing_store_untouched_on_error(tmp_path, note10_dir):
    from bench.store import open_store

    store = tmp_path / "s.sqlite"
    with open_store(store) as st:
        import_table(st, "note10", W12, note10_dir)
    before = store.read_bytes()
    bad = _copy_tables(note10_dir, tmp_path / "bad")
    (bad / "160_lookup_table.yaml").write_text("{{{")
    with open_store(store) as st, pytest.raises(LutError):
        import_table(st, "other", W12, bad)
    assert store.read_bytes() == before


def test_corrupt_parquet_one_line(tmp_path):
    bad = tmp_path / "t.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    r = cli("lut", "import", "dev", bad, "--space", "ofa-mbv3-fmnist", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "parquet" in r.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_wrong_space_rejected(tmp_path, note10_dir):
    r = cli("lut", "import", "note10", note10_dir, "--space", "ofa-mbv3-w1.0", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "not an entry of space ofa-mbv3-w1.0" in r.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_store_not_sqlite_and_newer_schema(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"hello, I am not a database" * 100)
    before = junk.read_bytes()
    r = cli("lut", "export", "x", "--out", tmp_path / "o", "--store", junk, "--space", "ofa-mbv3-fmnist")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert junk.read_bytes() == before
    from bench.store import open_store

    newer = tmp_path / "newer.sqlite"
    open_store(newer).close()
    con = sqlite3.connect(newer)  # SQL on purpose: a store written by a newer ofa-bench, which no API writes
    con.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)")
    con.commit()
    con.close()
    before = newer.read_bytes()
    r = cli("predict", "--device", "x", "--store", newer, "--space", "ofa-mbv3-fmnist")
    assert r.returncode != 0 and "newer" in r.stderr and r.stderr.count("\n") == 1
    assert newer.read_bytes() == before


def test_unknown_space_and_device(tmp_path):
    r = cli("lut", "export", "nope", "--out", tmp_path / "o", "--space", "no-such-space", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "unknown search space" in r.stderr and r.stderr.count("\n") == 1
    r = cli("predict", "--device", "nope", "--space", "ofa-mbv3-fmnist", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()
    from bench.store import open_store

    open_store(tmp_path / "empty.sqlite").close()
    r = cli("predict", "--device", "nope", "--space", "ofa-mbv3-fmnist", "--store", tmp_path / "empty.sqlite")
    assert r.returncode != 0 and "no latency table" in r.stderr and r.stderr.count("\n") == 1
    with pytest.raises(LutError):
        read_yaml_dir(tmp_path)


def test_incomplete_table_exports_only_when_asked(tmp_path):
    """A table missing entries is refused with what is missing (it used to export 75 of 96 entries, exit 0);
    --partial writes it and says how many are missing."""
    import json

    from bench.table import candidates

    space = SearchSpace.get("ofa-mbv3-fmnist")
    some = candidates(space, [24])[:10]
    src = tmp_path / "t.csv"
    src.write_text("resolution,key,latency_ms\n" + "".join(f"{e.resolution},{e.key},0.5\n" for e in some))
    store = tmp_path / "s.sqlite"
    assert cli("lut", "import", "dev", src, "--space", space.name, "--store", store).returncode == 0
    r = cli("lut", "export", "dev", "--space", space.name, "--format", "csv", "--out", tmp_path / "o.csv",
            "--store", store)
    total = len(candidates(space, [24]))
    assert r.returncode == 2 and f"misses {total - 10} of {total} entries (at 24)" in r.stderr
    assert "--partial" in r.stderr and not (tmp_path / "o.csv").exists()
    r = cli("lut", "export", "dev", "--space", space.name, "--format", "csv", "--out", tmp_path / "o.csv",
            "--store", store, "--partial", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["entries"], doc["missing"], doc["complete"]) == (10, total - 10, False)
    assert len((tmp_path / "o.csv").read_text().strip().splitlines()) == 11
