"""Few-shot tables by transfer (`profile --few-shot K`, bench.transfer): the entries chosen, the transfer model on
synthetic tables, provenance in the store and in reports, a full profile and nightly replacing transferred
entries, and the errors a user can cause."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.measure import ProfileError
from bench.table import EntryStats, candidates, import_table, table_from_store
from bench.transfer import (STRUCTURAL, SourceTable, check_few_shot, choose_entries, depthwise_multiply_adds,
                            fill_by_transfer, fit_transfer, key_group, multiply_adds, operator_count, plan_few_shot,
                            stratum, transfer_table, transferred_entries)
from ofa_core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")
RES = [24, 32]
ENTRIES = candidates(SPACE, RES)
KEYS = [(e.resolution, e.key) for e in ENTRIES]


def base_table(seed: int = 0) -> dict:
    """A random table whose latencies span two decades, as block tables do."""
    rng = np.random.default_rng(seed)
    return dict(zip(KEYS, np.exp(rng.uniform(np.log(0.005), np.log(0.5), len(KEYS)))))


def noisy(table: dict, fn, rel: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: float(fn(v) * (1 + rel * rng.standard_normal())) for k, v in table.items()}


def sources_and_target(seed: int = 0):
    """Sources: scaled / powered / offset copies of a random table with 2-3% noise; the new device: another,
    nonlinear transform of it (a per-call overhead plus a power law)."""
    x = base_table(seed)
    sources = [SourceTable("dev-a", noisy(x, lambda v: 2.0 * v, 0.02, 1)),
               SourceTable("dev-b", noisy(x, lambda v: 0.7 * v ** 1.1, 0.03, 2)),
               SourceTable("dev-c", noisy(x, lambda v: v + 0.01, 0.02, 3))]
    target = noisy(x, lambda v: 0.003 + 1.5 * v ** 0.9, 0.01, 4)
    return sources, target


def test_transfer_recovers_a_nonlinear_target():
    sources, target = sources_and_target()
    picks = choose_entries(SPACE, RES, sources, 16)
    measured = {(e.resolution, e.key): target[(e.resolution, e.key)] for e in picks}
    model, moved = transfer_table(measured, sources, KEYS)
    assert set(moved) == set(KEYS) - set(measured)
    rel = np.array([moved[k] / target[k] - 1 for k in moved])
    assert np.median(np.abs(rel)) < 0.05 and np.mean(np.abs(rel) < 0.10) > 0.85, model.to_dict()
    # what a whole subnet sums: errors of single entries mostly cancel
    rng = np.random.default_rng(0)
    for _ in range(20):
        ks = [KEYS[i] for i in rng.choice(len(KEYS), 20, replace=False)]
        full = {**measured, **moved}
        assert abs(sum(full[k] for k in ks) / sum(target[k] for k in ks) - 1) < 0.05
    assert model.n_measured == 16 and model.devices == ["dev-a", "dev-b", "dev-c"]
    assert model.sources == ("dev-a", "dev-b", "dev-c", *STRUCTURAL) and len(STRUCTURAL) == 3
    assert model.to_dict()["sources"] == model.devices
    assert model.kind in model.alternatives and model.loo_rel_rmse == model.alternatives[model.kind]


def test_a_kernel_factor_is_kept_only_where_it_helps():
    sources, target = sources_and_target()
    slow7 = {k: v * (1.5 if key_group(k) == "k7" else 1.0) for k, v in target.items()}
    for values, grouped in ((slow7, True), (target, False)):
        picks = choose_entries(SPACE, RES, sources, 24)
        model = fit_transfer({(e.resolution, e.key): values[(e.resolution, e.key)] for e in picks}, sources)
        assert model.kind.endswith("+kernel") == grouped and model.grouping == "kernel", model.to_dict()
    assert model.group_log_factor == {}
    picks = choose_entries(SPACE, RES, sources, 24)
    model, moved = transfer_table({(e.resolution, e.key): slow7[(e.resolution, e.key)] for e in picks}, sources, KEYS)
    assert model.to_dict()["group_factor"]["k7"] > 1.15
    assert np.median([abs(moved[k] / slow7[k] - 1) for k in moved]) < 0.10


def test_a_kernel_slow_only_where_it_is_wider_than_the_map_is_grouped_so():
    """A device whose 7x7 depthwise convolutions are slow only on maps under 4x4 (most of the window on padding,
    as the torch runtime on this CPU): the factor by kernel size alone cannot tell those blocks from the other 7x7
    ones; grouping by kernel size and width against the map can, and leave-one-out picks it."""
    sources, target = sources_and_target()
    assert {key_group(k, "kernel-wide") for k in KEYS} >= {"k7", "k7-wide", "k5-wide", "k3", "other"}
    assert all(key_group(k, "kernel-wide").removesuffix("-wide") == key_group(k) for k in KEYS)
    slow = {k: v * (1.8 if key_group(k, "kernel-wide") == "k7-wide" else 1.0) for k, v in target.items()}
    # the chosen entries, and 7x7 blocks on wider maps (the chooser, on these sources, picks the narrow ones)
    keys = [(e.resolution, e.key) for e in choose_entries(SPACE, RES, sources, 16)]
    keys += [k for k in KEYS if key_group(k, "kernel-wide") == "k7" and k not in keys][:8]
    model, moved = transfer_table({k: slow[k] for k in keys}, sources, KEYS)
    assert model.kind.endswith("+kernel-wide") and model.grouping == "kernel-wide", model.to_dict()
    factors = model.to_dict()["group_factor"]
    assert factors["k7-wide"] > 1.3 and abs(factors["k7"] - 1) < 0.1, factors
    assert np.median([abs(moved[k] / slow[k] - 1) for k in moved]) < 0.10
    # where the measured entries cannot tell the two groupings apart, the coarser one is kept
    picks = choose_entries(SPACE, RES, sources, 24)
    assert not any(key_group((e.resolution, e.key), "kernel-wide") == "k7" for e in picks)
    model = fit_transfer({(e.resolution, e.key): slow[(e.resolution, e.key)] for e in picks}, sources)
    assert model.grouping == "kernel" and model.kind.endswith("+kernel"), model.to_dict()


def test_multiply_adds_of_every_entry_of_every_space():
    """The multiply-add column reads every key of every space (a key it cannot read is an error, not a zero),
    and counts what a block computes."""
    for name in SearchSpace.names():
        space = SearchSpace.get(name)
        for e in candidates(space, [min(space.resolutions), max(space.resolutions)]):
            assert multiply_adds((e.resolution, e.key)) > 0, e.key
    key = (28, "expanded_conv-input:14x14x16-output:7x7x16-expand:48-kernel:5-stride:2-idskip:0-se:0-hs:0")
    assert multiply_adds(key) == 14 * 14 * 16 * 48 + 7 * 7 * 48 * 25 + 7 * 7 * 48 * 16
    with_se = (28, "expanded_conv-input:2x2x48-output:2x2x48-expand:144-kernel:3-stride:1-idskip:1-se:1-hs:1")
    assert multiply_adds(with_se) == 2 * 2 * 48 * 144 + 2 * 2 * 144 * (9 + 48) + 2 * 144 * 36
    assert multiply_adds((28, "Logits-input:1x1x256-output:10")) == 2560
    assert depthwise_multiply_adds(key) == 7 * 7 * 48 * 25 and depthwise_multiply_adds(with_se) == 2 * 2 * 144 * 9
    assert depthwise_multiply_adds((28, "Logits-input:1x1x256-output:10")) == 0
    with pytest.raises(ValueError, match="no multiply-add count"):
        multiply_adds((28, "Mystery-block"))


def test_a_device_bound_by_operators_is_found_from_the_operator_count():
    """A device whose blocks cost a fixed time per operator (a runtime that runs a graph op by op) follows none
    of the compute-bound sources; the operator count beside them carries it, and no provenance names it."""
    sources, _ = sources_and_target()
    dispatch = {k: 0.02 * operator_count(k) * (1 + 0.01 * np.sin(i)) for i, k in enumerate(KEYS)}
    picks = choose_entries(SPACE, RES, sources, 16)
    model, moved = transfer_table({(e.resolution, e.key): dispatch[(e.resolution, e.key)] for e in picks},
                                  sources, KEYS)
    assert np.median([abs(moved[k] / dispatch[k] - 1) for k in moved]) < 0.03, model.to_dict()
    assert not set(STRUCTURAL) & set(model.devices) and model.to_dict()["sources"] == model.devices
    counts = {e.kind: operator_count((e.resolution, e.key)) for e in ENTRIES}
    assert counts["first_conv"] == 3 and counts["pool"] == 1
    # expansion 3 + depthwise 3 + projection 2 (+ squeeze-excite 6, + residual 1)
    keys = {(bool(e.spec.se), e.spec.stride == 1 and e.in_channels == e.out_channels): (e.resolution, e.key)
            for e in ENTRIES if e.kind == "mbconv" and e.expand > 1}
    assert operator_count(keys[(False, False)]) == 8 and operator_count(keys[(True, True)]) == 15


def test_exact_scale_is_found_from_few_entries():
    x = base_table(1)
    src = [SourceTable("only", x)]
    measured = {k: 3.0 * x[k] for k in KEYS[:5]}
    model = fit_transfer(measured, src)
    _, moved = transfer_table(measured, src, KEYS)
    assert model.loo_rel_rmse < 1e-9
    assert all(abs(moved[k] / (3.0 * x[k]) - 1) < 1e-9 for k in moved)


def test_choose_entries_spreads_and_leans_to_disagreement():
    sources, _ = sources_and_target()
    picks = choose_entries(SPACE, RES, sources, 24)
    assert len(picks) == 24 == len(set(picks))
    assert picks == choose_entries(SPACE, RES, sources, 24)  # deterministic
    assert {e.resolution for e in picks} == set(RES)
    assert len({stratum(e) for e in picks}) >= 12  # spread over block types at both resolutions
    # an entry the devices disagree on wildly is measured
    odd = KEYS[40]
    skewed = [SourceTable(s.device, {**s.values_ms, odd: s.values_ms[odd] * (30.0 if i == 0 else 1.0)})
              for i, s in enumerate(sources)]
    assert odd in {(e.resolution, e.key) for e in choose_entries(SPACE, RES, skewed, 8)}
    # entries already measured count toward K and are not chosen again
    have = [(e.resolution, e.key) for e in picks[:10]]
    more = choose_entries(SPACE, RES, sources, 24, have)
    assert len(more) == 14 and not set(have) & {(e.resolution, e.key) for e in more}
    assert choose_entries(SPACE, RES, sources, 5, have) == []


def test_fit_needs_entries_and_sources():
    with pytest.raises(ProfileError):
        fit_transfer({}, [SourceTable("a", base_table())])
    with pytest.raises(ProfileError):
        fit_transfer({KEYS[0]: 1.0}, [])


# ---- with a store -------------------------------------------------------------------------------------------
def _stats(values: dict) -> dict:
    return {k: EntryStats(v, v, 0.0, 10) for k, v in values.items()}


def _measure(store, device: str, fp_id: str, values: dict) -> None:
    """Block measurements of `device` as profile writes them (raw: no reference block)."""
    with store.running(device, fp_id, SPACE.name, "profile", {}, {}) as run_id:
        store.add_measurements(run_id, [{"resolution": r, "key": k, "kind": "block", "latency_ms": v, "n": 10,
                                         "samples_ms": [v] * 10, "env": {}} for (r, k), v in values.items()])


@pytest.fixture()
def few_shot_store(tmp_path):
    """A store with two source tables (imported) and a new device that measured 16 entries, the rest
    transferred by `fill_by_transfer` in a profile run marked few-shot."""
    from bench.store import open_store

    sources, target = sources_and_target()
    store = open_store(str(tmp_path / "s.sqlite"))
    for s in sources[:2]:
        import_table(store, s.device, SPACE, tmp_path / f"{s.device}.csv", entries=_stats(s.values_ms))
    fp_id = store.register_fingerprint("newdev", {"name": "newdev", "synthetic": True})
    plan = plan_few_shot(store, SPACE, RES, "newdev", set(), 16)
    assert [s.device for s in plan.sources] == ["dev-a", "dev-b"] and len(plan.measure) == 16
    _measure(store, "newdev", fp_id, {(e.resolution, e.key): target[(e.resolution, e.key)] for e in plan.measure})
    run_id = store.start_run("newdev", fp_id, SPACE.name, "profile", {"few_shot": 16}, {})
    summary = fill_by_transfer(store, "newdev", SPACE, RES, run_id, plan)
    store.finish_run(run_id, "done")
    yield store, fp_id, plan, summary, target
    store.close()


def test_provenance_is_stored_and_the_table_knows_it(few_shot_store):
    store, fp_id, plan, summary, _ = few_shot_store
    assert summary["entries_transferred"] == len(KEYS) - 16 and summary["sources"] == ["dev-a", "dev-b"]
    rows = store.latest_measurements(fp_id, SPACE.name, kind="transferred")
    assert len(rows) == len(KEYS) - 16
    env = rows[0]["env"]
    assert env["transfer"]["sources"] == ["dev-a", "dev-b"] and env["transfer"]["few_shot"] == 16
    assert env["protocol"] == "transfer/1" and rows[0]["n"] == 0
    run = store.run(rows[0]["run_id"])
    assert run["kind"] == "profile" and run["settings"]["few_shot"] == 16
    # transferred rows are no measurements: profile would measure them
    assert store.measured_keys(fp_id, SPACE.name) == {(e.resolution, e.key) for e in plan.measure}
    table = table_from_store(store, "newdev", SPACE)
    assert set(table.entries) == set(KEYS) and len(table.transferred) == len(KEYS) - 16
    assert table.transferred_share == pytest.approx((len(KEYS) - 16) / len(KEYS))
    assert table.provenance()["transferred_from"] == ["dev-a", "dev-b"]
    assert table.complete_resolutions(SPACE) == RES
    # a device whose table is partly transferred is no source for another few-shot profile
    assert [s.device for s in plan_few_shot(store, SPACE, RES, "other", set(), 8).sources] == ["dev-a", "dev-b"]


def test_measuring_replaces_transferred_entries(few_shot_store):
    store, fp_id, _, _, target = few_shot_store
    moved = transferred_entries(store, fp_id, SPACE)
    assert len(moved) == len(KEYS) - 16
    first = [(e.resolution, e.key) for e in moved[:10]]
    _measure(store, "newdev", fp_id, {k: target[k] for k in first})  # what a profile or nightly writes
    table = table_from_store(store, "newdev", SPACE)
    assert len(table.transferred) == len(KEYS) - 26 and not set(first) & set(table.transferred)
    assert all(table.entries[k].latency_ms == target[k] for k in first)
    rest = [(e.resolution, e.key) for e in transferred_entries(store, fp_id, SPACE)]
    _measure(store, "newdev", fp_id, {k: target[k] for k in rest})
    table = table_from_store(store, "newdev", SPACE)
    assert table.transferred_share == 0.0 and transferred_entries(store, fp_id, SPACE) == []


def test_nightly_measures_transferred_entries_first(few_shot_store, monkeypatch):
    import bench.export
    from bench import nightly

    store, fp_id, _, _, _ = few_shot_store
    seen = []
    monkeypatch.setattr(bench.export, "export_entry", lambda *a, **k: Path("unused.onnx"))
    monkeypatch.setattr(nightly, "_measure_entries",
                        lambda agent, store, run_id, fp, sp, entries, *a: seen.extend(entries))
    rows = store.latest_measurements(fp_id, SPACE.name, kind="block")
    prof = SimpleNamespace(name="newdev", model_format="onnx", precision="fp32")
    rep = nightly._check_space(None, store, prof, fp_id, SPACE, RES, rows, nightly.NightlySettings(max_transferred=20))
    moved = [(e.resolution, e.key) for e in transferred_entries(store, fp_id, SPACE)]
    assert [(e.resolution, e.key) for e in seen[:20]] == moved[:20]
    assert rep["transferred_measured"] == 20 and len(seen) > 20  # then the sentinels


def test_check_few_shot(tmp_path):
    from bench.store import open_store

    said = []
    assert check_few_shot(str(tmp_path / "a.sqlite"), SPACE, RES, ["x"], 10_000, said.append) is None
    assert "full profile" in said[0] and "192 entries" in said[0]
    open_store(str(tmp_path / "b.sqlite")).close()
    with pytest.raises(ProfileError, match="--few-shot needs another device's measured table"):
        check_few_shot(str(tmp_path / "b.sqlite"), SPACE, RES, ["x"], 8, said.append)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_cli_few_shot_without_sources_is_one_line(tmp_path):
    out = cli("profile", "fpga-zu3eg-model", "--space", SPACE.name, "--resolutions", "24", "--store",
              tmp_path / "s.sqlite", "--few-shot", "8")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--few-shot needs another device's measured table" in lines[0], out.stderr


def test_cli_few_shot_profile_then_reports(tmp_path):
    """End to end on the analytic FPGA model: K entries measured, the rest transferred from an imported table,
    calibration subnets measured; predict says how much is transferred; a larger K measures only the extra."""
    from bench.store import open_store

    store_path = tmp_path / "s.sqlite"
    x = base_table(2)
    with open_store(str(store_path)) as store:
        import_table(store, "dev-a", SPACE, tmp_path / "a.csv",
                     entries=_stats({k: v for k, v in x.items() if k[0] == 24}))
    out = cli("profile", "fpga-zu3eg-model", "--space", SPACE.name, "--resolutions", "24", "--store", store_path,
              "--few-shot", "12", "--calibration-subnets", "4", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["entries_measured"] == 12 and doc["devices"][0]["entries_transferred"] == 96 - 12
    assert doc["devices"][0]["transfer"]["sources"] == ["dev-a"] and doc["subnets_measured"] == 4
    out = cli("predict", "--device", "fpga-zu3eg-model", "--store", store_path, "--json")
    assert out.returncode == 0, out.stderr
    pred = json.loads(out.stdout)
    assert pred["transferred_share"] == pytest.approx(84 / 96) and pred["provenance"]["transferred_from"] == ["dev-a"]
    out = cli("predict", "--device", "fpga-zu3eg-model", "--store", store_path)
    assert "88% of the table (84 of 96 entries) transferred from dev-a" in out.stdout
    out = cli("profile", "fpga-zu3eg-model", "--space", SPACE.name, "--resolutions", "24", "--store", store_path,
              "--few-shot", "16", "--calibration-subnets", "4", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["entries_measured"] == 4 and doc["entries_reused"] == 12
    assert doc["devices"][0]["entries_transferred"] == 80


def test_cli_few_shot_at_a_batch_size_transfers_from_that_batch(tmp_path):
    """--few-shot at batch 4 transfers from the store's tables of batch 4 only: a batch-1 source is not enough
    (one-line error), a batch-4 one is used, and the table it makes is of batch 4."""
    from bench.store import open_store

    store_path = tmp_path / "s.sqlite"
    x = _stats({k: v for k, v in base_table(2).items() if k[0] == 24})
    with open_store(str(store_path)) as store:
        import_table(store, "dev-a", SPACE, tmp_path / "a.csv", entries=x)
    args = ("profile", "fpga-zu3eg-model", "--space", SPACE.name, "--resolutions", "24", "--store", store_path,
            "--few-shot", "12", "--calibration-subnets", "0", "--batch", "4", "--json")
    out = cli(*args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "batch 4" in out.stderr, out.stderr
    with open_store(str(store_path)) as store:
        import_table(store, "dev-b", SPACE, tmp_path / "b.csv", entries=x, batch=4)
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    dev = json.loads(out.stdout)["devices"][0]
    assert dev["batch"] == 4 and dev["entries_measured"] == 12 and dev["entries_transferred"] == 96 - 12
    assert dev["transfer"]["sources"] == ["dev-b"]
    out = cli("predict", "--device", "fpga-zu3eg-model", "--store", store_path, "--batch", "4", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["transferred_share"] == pytest.approx(84 / 96)


def test_a_few_shot_profile_times_its_calibration_subnets_briefly(tmp_path, monkeypatch):
    """The calibration subnets of a few-shot profile are timed in two passes (a third where those disagree by
    more than 2%) at the entries' duration, not in validate's three to six passes of 0.5 s: on this project's
    devices they cost more device time than the K entries. Their models come through the profile's export queue
    (waiting for them is export time, not device time). A full profile keeps validate's timing."""
    import bench.validate as V
    from bench.export import ExportQueue
    from bench.measure import MeasureSettings
    from bench.profile import FEW_SHOT_SUBNET_PASSES, profile_device
    from bench.store import open_store

    seen, asked = [], []
    real_measure, real_subnet = V.measure_subnets, ExportQueue.subnet

    def measure(agent, store, run_id, fp_id, space, cfgs, settings, *args, **kwargs):
        seen.append((settings, kwargs.get("paths"), len(cfgs)))
        return real_measure(agent, store, run_id, fp_id, space, cfgs, settings, *args, **kwargs)

    def subnet(queue, space, cfg, seed=0):
        asked.append(cfg)
        return real_subnet(queue, space, cfg, seed)

    monkeypatch.setattr(V, "measure_subnets", measure)
    monkeypatch.setattr(ExportQueue, "subnet", subnet)
    store_path = str(tmp_path / "s.sqlite")
    with open_store(store_path) as store:
        import_table(store, "dev-a", SPACE, tmp_path / "a.csv",
                     entries=_stats({k: v for k, v in base_table(2).items() if k[0] == 24}))
    settings = MeasureSettings(min_duration_s=0.05, calibration_subnets=4)
    rep = profile_device("fpga-zu3eg-model", SPACE, store_path, [24], settings, few_shot=12)
    assert rep.status == "done" and rep.entries_measured == 12 and rep.subnets_measured == 4, rep.error
    [(timing, paths, n)] = seen
    assert (timing.passes, timing.max_passes, timing.precision) == FEW_SHOT_SUBNET_PASSES
    assert timing.min_duration_s == 0.05 and timing.per_call == 4 and n == 4  # one invocation per pass
    assert paths is not None and len(paths) == 4 and len(asked) == 5  # and the reference subnet
    seen.clear()
    rep = profile_device("fpga-zu9eg-model", SPACE, store_path, [24], settings)
    assert rep.status == "done" and rep.subnets_measured == 4, rep.error
    assert seen[0][0].passes == V.ValidateSettings().passes and seen[0][0].min_duration_s is None
