"""`lut import` takes tables as people publish them: folders of `{R}_lookup_table.json` and/or `.yaml`, single
files, `var` instead of `std`, CSV and Parquet (what `lut export` writes imports back); the space is found from
the keys, and every command whose --space is left out works on the space of the device's table."""
import json
import math
import shutil

import numpy as np
import pytest
import yaml

from bench.table import candidates, subnet_keys
from ofa_core.space import SearchSpace
from _cli import run_cli as _cli, one_error as _one_error

W10 = SearchSpace.get("ofa-mbv3-w1.0")
W12 = SearchSpace.get("ofa-mbv3-w1.2")
FMNIST = SearchSpace.get("ofa-mbv3-fmnist")


@pytest.fixture()
def note10_dir(anchors_dir):
    return anchors_dir / "ofa-mbv3-w12-note10" / "latency_table_note10"


def _as_json(src, dst, names=None):
    """A copy of the official YAML tables as `{R}_lookup_table.json` files (all, or those named)."""
    dst.mkdir(exist_ok=True)
    for p in sorted(src.glob("*_lookup_table.yaml")):
        if names is None or p.name in names:
            (dst / p.name.replace(".yaml", ".json")).write_text(json.dumps(yaml.safe_load(p.read_text())))
    return dst


def _raw(note10_dir):
    return {int(p.name.split("_")[0]): yaml.safe_load(p.read_text()) for p in note10_dir.glob("*.yaml")}


def _synthetic(space, resolutions, cell):
    """{r: {key: cell(i)}} over every candidate entry of `space` at `resolutions`."""
    return {r: {e.key: cell(i) for i, e in enumerate(candidates(space, [r]))} for r in resolutions}


# ---- formats -------------------------------------------------------------------------------------------
def test_json_folder_imports_and_predicts_hand_sums_without_space(tmp_path, capsys, note10_dir):
    """The issue's case: published `{R}_lookup_table.json` files, no --space anywhere."""
    src = _as_json(note10_dir, tmp_path / "json")
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "phone", src, "--store", store, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["space"] == "ofa-mbv3-w1.2" and doc["entries"] == 17 * 96
    raw = _raw(note10_dir)
    for cfg in [W12.smallest(160), W12.largest(224), *W12.sample(np.random.default_rng(3), 3, [164, 200, 216])]:
        rc, out, err = _cli(capsys, "predict", "--device", "phone", "--config", cfg.to_string(), "--store", store,
                            "--json")
        assert rc == 0, err
        doc = json.loads(out)
        by_hand = sum(raw[cfg.r][k]["mean"] for k in subnet_keys(W12, cfg))
        assert doc["space"] == "ofa-mbv3-w1.2" and doc["table_sum_ms"] == pytest.approx(by_hand, rel=1e-12)


def test_mixed_json_and_yaml_folder_and_single_files(tmp_path, capsys, note10_dir):
    names = sorted(p.name for p in note10_dir.glob("*.yaml"))
    mixed = _as_json(note10_dir, tmp_path / "mixed", names[::2])
    for name in names[1::2]:
        shutil.copy(note10_dir / name, mixed / name)
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "mixed", mixed, "--store", store, "--json")
    assert rc == 0, err
    assert json.loads(out)["entries"] == 17 * 96
    from bench.table import load_device_table

    table = load_device_table("mixed", W12, str(store))
    raw = _raw(note10_dir)
    assert {k: st.mean_ms for k, st in table.entries.items()} == {(r, k): c["mean"] for r, t in raw.items()
                                                                   for k, c in t.items()}
    # one file of either kind; a file not named {R}_lookup_table takes R from its first-conv key
    rc, out, err = _cli(capsys, "lut", "import", "one", mixed / "160_lookup_table.json", "--store", store, "--json")
    assert rc == 0 and json.loads(out)["resolutions"] == [160], err
    (tmp_path / "published.json").write_text(json.dumps(raw[164]))
    rc, out, err = _cli(capsys, "lut", "import", "two", tmp_path / "published.json", "--store", store, "--json")
    assert rc == 0 and json.loads(out)["resolutions"] == [164], err
    # the same resolution twice is refused, not merged
    shutil.copy(note10_dir / "164_lookup_table.yaml", mixed / "164_lookup_table.yaml")
    (mixed / "164_lookup_table.json").write_text(json.dumps(raw[164]))
    rc, out, err = _cli(capsys, "lut", "import", "dup", mixed, "--store", store)
    _one_error(rc, err, "resolution 164 is given twice")


def test_var_becomes_std_and_a_missing_spread_stays_unknown(tmp_path, capsys):
    """ProxylessNAS-style `var`: std = sqrt(var). A cell with neither is stored as unknown (NULL), not as 0,
    and exports without a `std`."""
    cells = _synthetic(FMNIST, [24], lambda i: {"mean": 0.01 * (i + 1), "var": 1e-4 * (i + 1), "count": 7})
    table = cells[24]
    keys = sorted(table)
    del table[keys[0]]["var"]
    table[keys[1]] = {"mean": 0.5}
    src = tmp_path / "t"
    src.mkdir()
    (src / "24_lookup_table.json").write_text(json.dumps(table))
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "d", src, "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == FMNIST.name, err
    from bench.table import load_device_table

    got = load_device_table("d", FMNIST, str(store)).entries
    for k, cell in table.items():
        st = got[(24, k)]
        assert st.mean_ms == cell["mean"] and st.count == cell.get("count", 0)
        assert st.std_ms == (math.sqrt(cell["var"]) if "var" in cell else None)
    rc, out, err = _cli(capsys, "lut", "export", "d", "--out", tmp_path / "o", "--store", store)
    assert rc == 0, err
    back = yaml.safe_load((tmp_path / "o" / "24_lookup_table.yaml").read_text())
    assert "std" not in back[keys[0]] and "std" not in back[keys[1]]
    assert back[keys[2]]["std"] == math.sqrt(table[keys[2]]["var"])


@pytest.mark.parametrize("fmt,suffix", [("csv", ".csv"), ("parquet", ".parquet")])
def test_export_imports_back_without_space(tmp_path, capsys, note10_dir, fmt, suffix):
    """lut export (CSV, Parquet) -> lut import -> lut export (YAML) gives the published numbers back exactly."""
    store = tmp_path / "s.sqlite"
    assert _cli(capsys, "lut", "import", "a", note10_dir, "--store", store)[0] == 0
    rc, out, err = _cli(capsys, "lut", "export", "a", "--format", fmt, "--out", tmp_path / f"t{suffix}",
                        "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == "ofa-mbv3-w1.2", err
    rc, out, err = _cli(capsys, "lut", "import", "b", tmp_path / f"t{suffix}", "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == "ofa-mbv3-w1.2", err
    rc, out, err = _cli(capsys, "lut", "export", "b", "--out", tmp_path / "yaml", "--store", store)
    assert rc == 0, err
    for p in note10_dir.glob("*_lookup_table.yaml"):
        assert yaml.safe_load((tmp_path / "yaml" / p.name).read_text()) == yaml.safe_load(p.read_text())


def test_hand_written_csv_with_var(tmp_path, capsys):
    es = candidates(FMNIST, [28])
    rows = "".join(f"28,{e.key},{0.1 + i / 100},{0.0009 if i % 2 else ''},{i}\n" for i, e in enumerate(es))
    (tmp_path / "t.csv").write_text("resolution,key,mean_ms,var,count\n" + rows)
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "d", tmp_path / "t.csv", "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == FMNIST.name, err
    from bench.table import load_device_table

    got = load_device_table("d", FMNIST, str(store)).entries
    for i, e in enumerate(es):
        st = got[(28, e.key)]
        assert st.latency_ms == st.mean_ms == pytest.approx(0.1 + i / 100) and st.count == i
        assert st.std_ms == (pytest.approx(0.03) if i % 2 else None)


# ---- the space from the keys ---------------------------------------------------------------------------
def test_w10_keys_found_and_predict_export_follow_the_device(tmp_path, capsys):
    """A w1.0 table imports without --space; a device with a w1.2 table predicts and exports in w1.2, and one
    with tables of both is asked for --space."""
    src = tmp_path / "w10"
    src.mkdir()
    for r, t in _synthetic(W10, [160, 176], lambda i: {"mean": 0.05 + i / 1000, "std": 0.001, "count": 3}).items():
        (src / f"{r}_lookup_table.json").write_text(json.dumps(t))
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "w10dev", src, "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == "ofa-mbv3-w1.0", err
    w12src = tmp_path / "w12"
    w12src.mkdir()
    for r, t in _synthetic(W12, [160], lambda i: {"mean": 0.07 + i / 1000}).items():
        (w12src / f"{r}_lookup_table.yaml").write_text(yaml.safe_dump(t))
    rc, out, err = _cli(capsys, "lut", "import", "w12dev", w12src, "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == "ofa-mbv3-w1.2", err
    for dev, space in (("w10dev", W10), ("w12dev", W12)):
        rc, out, err = _cli(capsys, "predict", "--device", dev, "--config", "smallest", "--store", store, "--json")
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["space"] == space.name and doc["config"] == space.smallest(min(doc["config_dict"]["r"])).to_string()
        rc, out, err = _cli(capsys, "lut", "export", dev, "--format", "csv", "--out", tmp_path / f"{dev}.csv",
                            "--store", store, "--json")
        assert rc == 0 and json.loads(out)["space"] == space.name, err
    # the w1.0 keys filed under the w1.2 device too: two spaces, so --space is needed
    assert _cli(capsys, "lut", "import", "w12dev", src, "--store", store)[0] == 0
    rc, out, err = _cli(capsys, "predict", "--device", "w12dev", "--store", store)
    _one_error(rc, err, "has tables of several spaces (ofa-mbv3-w1.0, ofa-mbv3-w1.2); pass --space")
    rc, out, err = _cli(capsys, "predict", "--device", "w12dev", "--space", "ofa-mbv3-w1.2", "--store", store, "--json")
    assert rc == 0 and json.loads(out)["space"] == "ofa-mbv3-w1.2", err


def test_detect_space_rule():
    from bench.table import LutError
    from bench.table.spaces import detect_space, match_space

    full = [(e.resolution, e.key) for e in candidates(W12, [160, 224])]
    assert detect_space(full, "t") is W12
    assert detect_space(full[:7], "t") is W12  # a partial table still fits only w1.2
    m = match_space(full, W12)
    assert m.exact and m.share == 1.0 and match_space(full[:7], W12).share < 1
    fm = [(e.resolution, e.key) for e in candidates(FMNIST, [24])]
    assert detect_space(fm, "t") is FMNIST
    with pytest.raises(LutError, match=r"closest space ofa-mbv3-w1.2 covers 99\.\d% of them, but key 'nope' at "
                                       r"resolution 160 is not an entry"):
        detect_space(full + [(160, "nope")], "t")
    with pytest.raises(LutError, match="resolution 999 is not in space ofa-mbv3-w1.2"):
        detect_space(full + [(999, full[0][1])], "t")


def test_wrong_space_given_names_the_right_one(tmp_path, capsys, note10_dir):
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "d", note10_dir, "--space", "ofa-mbv3-w1.0", "--store", store)
    _one_error(rc, err, "is not an entry of space ofa-mbv3-w1.0; the keys are those of ofa-mbv3-w1.2: "
                        "pass --space ofa-mbv3-w1.2")
    assert not store.exists()


def test_keys_of_no_space_exit_2_nothing_stored(tmp_path, capsys, note10_dir):
    src = _as_json(note10_dir, tmp_path / "t", {"160_lookup_table.yaml", "164_lookup_table.yaml"})
    doc = json.loads((src / "164_lookup_table.json").read_text())
    doc["Bogus-input:1x1x1-output:1x1x1"] = {"mean": 0.1, "std": 0.0, "count": 1}
    (src / "164_lookup_table.json").write_text(json.dumps(doc))
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "lut", "import", "d", src, "--store", store)
    _one_error(rc, err, "match no known space: closest space ofa-mbv3-w1.2 covers 99.4% of them, but key "
                        "'Bogus-input:1x1x1-output:1x1x1' at resolution 164")
    assert not store.exists()
    (tmp_path / "z.json").write_text(json.dumps({"foo": {"mean": 1.0}}))
    rc, out, err = _cli(capsys, "lut", "import", "d", tmp_path / "z.json", "--store", store)
    _one_error(rc, err, "cannot tell its resolution")
    (tmp_path / "9_lookup_table.json").write_text(json.dumps({"foo": {"mean": 1.0}}))
    rc, out, err = _cli(capsys, "lut", "import", "d", tmp_path / "9_lookup_table.json", "--store", store)
    _one_error(rc, err, "these keys match no known space (first key 'foo' at resolution 9")
    assert not store.exists()


# ---- corrupt input: one line, exit 2, nothing stored ---------------------------------------------------
@pytest.mark.parametrize("damage,needle", [
    (lambda t: t[: len(t) // 2], "not valid JSON at line"),
    (lambda t: t.replace('"mean": 0.', '"mean": NaN, "x": 0.', 1), "must be a finite number"),
    (lambda t: t.replace('"std": 0.', '"var": -0.', 1), "negative variance"),
    (lambda t: t.replace('"mean": ', '"median": ', 1), "must map to {mean, std, count}"),
    (lambda t: t.replace('"count": ', '"count": 1.5, "x": ', 1), "count must be a non-negative integer"),
    (lambda t: "[1, 2, 3]", "expected a mapping"),
])
def test_corrupt_json_one_line_store_untouched(tmp_path, capsys, note10_dir, damage, needle):
    store = tmp_path / "s.sqlite"
    assert _cli(capsys, "lut", "import", "note10", note10_dir, "--store", store)[0] == 0
    before = store.read_bytes()
    src = _as_json(note10_dir, tmp_path / "bad", {"160_lookup_table.yaml", "164_lookup_table.yaml"})
    victim = src / "164_lookup_table.json"
    victim.write_text(damage(victim.read_text()))
    rc, out, err = _cli(capsys, "lut", "import", "other", src, "--store", store)
    _one_error(rc, err, needle)
    assert store.read_bytes() == before


def test_import_is_one_transaction(tmp_path, note10_dir, monkeypatch):
    """A failure while the cells are written leaves no fingerprint, run or cell behind: the device's earlier
    table stays its latest one."""
    from bench.table import import_table, load_device_table
    from bench.store import Store, StoreError, open_store

    store = tmp_path / "s.sqlite"
    src = tmp_path / "fm.csv"
    src.write_text("resolution,key,mean_ms\n" + "".join(f"24,{e.key},0.5\n" for e in candidates(FMNIST, [24])))
    with open_store(store) as st:
        import_table(st, "d", None, src)
        counts = st.counts()
        real = Store.insert_measurements

        def failing(self, run_id, records):
            real(self, run_id, records)
            raise StoreError("disk full")

        monkeypatch.setattr(Store, "insert_measurements", failing)
        w12 = _as_json(note10_dir, tmp_path / "j", {"160_lookup_table.yaml"})
        with pytest.raises(StoreError):
            import_table(st, "d", None, w12)
        assert st.counts() == counts
    assert load_device_table("d", FMNIST, str(store)).space == FMNIST.name


def test_device_space_default_only_without_tables(tmp_path, capsys):
    from bench.table import device_space

    src = tmp_path / "fm.csv"
    src.write_text("resolution,key,mean_ms\n" + "".join(f"32,{e.key},0.5\n" for e in candidates(FMNIST, [32])))
    store = tmp_path / "s.sqlite"
    assert _cli(capsys, "lut", "import", "d", src, "--store", store)[0] == 0
    assert device_space("d", None, str(store), default="ofa-mbv3-w1.0") is FMNIST  # profile resumes it
    assert device_space("new", None, str(store), default="ofa-mbv3-w1.0") is W10
    assert device_space("new", None, str(tmp_path / "none.sqlite"), default="ofa-mbv3-w1.0") is W10
    assert not (tmp_path / "none.sqlite").exists()
    assert device_space("note10", None, str(store)) is W12  # the published table counts as the device's
    assert device_space(["d", "new"], None, str(store), default="ofa-mbv3-w1.0") is FMNIST
