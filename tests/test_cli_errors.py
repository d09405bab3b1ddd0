"""Bad invocations of the installed `ofa-bench`: each ends in exit 2, one `ofa-bench: error:` line and no
traceback, and changes nothing on disk (no store, no profile, no output, nothing outside the temporary folder).

Every case runs the installed entry point in a fresh process with HOME, XDG_* and OFA_BENCH_* inside tmp_path,
so the user's own store and profiles are never touched. Cases fail before any heavy work (about 0.3 s each).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENTRY = Path(sys.executable).parent / "ofa-bench"

# Placeholders in a case's arguments, made fresh in tmp_path for every case:
#   {tmp}   the case's folder           {store}  an existing, empty store
#   {file}  a regular file              {dir}    an existing folder holding one file
#   {missing} a store path that does not exist (must stay absent)
#   {figdir} a folder named fig.png     {onnxdir} a folder named x.onnx
#   {table} a valid one-entry CSV table of ofa-mbv3-fmnist
CASES = [
    # -- the command line itself
    ("misspelt-command", ["serch", "--device", "x"], "No such command"),
    ("unknown-option", ["search", "--device", "x", "--latency", "3"], "No such option"),
    ("bad-float", ["search", "--device", "x", "--latency-ms", "abc"], "--latency-ms"),
    ("bad-int", ["profile", "local-cpu", "--per-call", "abc"], "--per-call"),
    ("missing-argument", ["validate"], "Missing argument"),
    # -- devices
    ("devices-list-unknown-option", ["devices", "list", "--bogus"], "No such option"),
    ("devices-show-unknown", ["devices", "show", "no-such-device"], "unknown device"),
    ("devices-show-ssh-without-user", ["devices", "show", "ssh:host"], "ssh:USER@HOST[:PORT]"),
    ("devices-probe-ssh-without-user", ["devices", "probe", "ssh:host:2222"], "ssh:USER@HOST[:PORT]"),
    ("devices-add-ssh-without-user", ["devices", "add", "pi", "--kind", "ssh", "--address", "host"],
     "USER@HOST[:PORT]"),
    ("devices-add-relative-path", ["devices", "add", "../x", "--kind", "local"], "not allowed"),
    ("devices-add-absolute-path", ["devices", "add", "{tmp}/abs", "--kind", "local", "--force"], "not allowed"),
    ("devices-add-hidden", ["devices", "add", ".hidden", "--kind", "local"], "not allowed"),
    ("devices-add-dotdot", ["devices", "add", "a..b", "--kind", "local"], "not allowed"),
    ("devices-add-space", ["devices", "add", "a b", "--kind", "local"], "not allowed"),
    ("devices-add-threads-0", ["devices", "add", "x", "--kind", "local", "--threads", "0"], "--threads"),
    ("devices-add-cv-nan", ["devices", "add", "x", "--kind", "local", "--cv-threshold", "nan"], "--cv-threshold"),
    ("devices-add-unknown-kind", ["devices", "add", "x", "--kind", "usb"], "unknown kind"),
    # -- profile (creates a store when it runs; a bad invocation must not)
    ("profile-min-duration-nan", ["profile", "local-cpu", "--min-duration-s", "nan"], "--min-duration-s"),
    ("profile-min-duration-negative", ["profile", "local-cpu", "--min-duration-s", "-1"], "--min-duration-s"),
    ("profile-warmup-inf", ["profile", "local-cpu", "--warmup-s", "inf"], "--warmup-s"),
    ("profile-rounds-0", ["profile", "local-cpu", "--rounds", "0"], "--rounds"),
    ("profile-per-call-0", ["profile", "local-cpu", "--per-call", "0"], "--per-call"),
    ("profile-batch-not-sizes", ["profile", "local-cpu", "--batch", "1,x"], "--batch"),
    ("profile-batch-0", ["profile", "local-cpu", "--batch", "1,0"], "--batch"),
    ("profile-ssh-without-user", ["profile", "ssh:host"], "ssh:USER@HOST[:PORT]"),
    ("profile-unknown-device", ["profile", "no-such-device"], "unknown device"),
    # -- lut
    ("lut-export-missing-store", ["lut", "export", "d", "--out", "{tmp}/out", "--store", "{missing}"],
     "does not exist"),
    ("lut-export-out-is-folder", ["lut", "export", "d", "--format", "csv", "--out", "{dir}", "--store", "{store}"],
     "is a folder"),
    ("lut-export-out-under-file", ["lut", "export", "d", "--format", "csv", "--out", "{file}/t.csv",
                                   "--store", "{store}"], "is not a folder"),
    ("lut-export-yaml-out-is-file", ["lut", "export", "d", "--out", "{file}", "--store", "{store}"],
     "not a folder"),
    ("lut-export-bad-format", ["lut", "export", "d", "--format", "xlsx", "--out", "{tmp}/o", "--store", "{store}"],
     "unknown table format"),
    ("lut-import-missing-source", ["lut", "import", "d", "{tmp}/nothing-here", "--store", "{missing}"],
     "no such file"),
    ("lut-import-store-under-file", ["lut", "import", "d", "{table}", "--space", "ofa-mbv3-fmnist",
                                     "--store", "{file}/s.sqlite"], "store"),
    ("lut-import-wrong-space", ["lut", "import", "d", "{table}", "--space", "ofa-mbv3-w1.0",
                                "--store", "{missing}"], "not in space"),
    # -- predict
    ("predict-missing-store", ["predict", "--device", "note10", "--store", "{missing}"], "does not exist"),
    ("predict-batch-0", ["predict", "--device", "note10", "--batch", "0"], "--batch"),
    ("predict-breakdown-suffix", ["predict", "--device", "note10", "--breakdown", "{tmp}/b.gif",
                                  "--store", "{store}"], "'.gif'"),
    ("predict-breakdown-folder", ["predict", "--device", "note10", "--breakdown", "{figdir}",
                                  "--store", "{store}"], "is a folder"),
    ("predict-breakdown-under-file", ["predict", "--device", "note10", "--breakdown", "{file}/b.png",
                                      "--store", "{store}"], "is not a folder"),
    # -- validate
    ("validate-missing-store", ["validate", "local-cpu", "--store", "{missing}"], "does not exist"),
    ("validate-subnets-1", ["validate", "local-cpu", "--subnets", "1"], "--subnets"),
    ("validate-per-call-0", ["validate", "local-cpu", "--per-call", "0"], "--per-call"),
    ("validate-min-duration-nan", ["validate", "local-cpu", "--min-duration-s", "nan"], "--min-duration-s"),
    ("validate-plot-suffix", ["validate", "local-cpu", "--plot", "{tmp}/p.txt", "--store", "{store}"], "'.txt'"),
    ("validate-max-passes", ["validate", "local-cpu", "--passes", "4", "--max-passes", "2", "--store", "{store}"],
     "--max-passes"),
    # -- nightly
    ("nightly-mistyped-store", ["nightly", "--store", "{missing}"], "does not exist"),
    ("nightly-default-store-missing", ["nightly"], "does not exist"),
    ("nightly-threshold-nan", ["nightly", "--threshold", "nan", "--store", "{store}"], "--threshold"),
    ("nightly-stale-days-negative", ["nightly", "--stale-days", "-1", "--store", "{store}"], "--stale-days"),
    ("nightly-plots-is-file", ["nightly", "--plots", "{file}", "--store", "{store}"], "not a folder"),
    # -- search
    ("search-latency-0", ["search", "--device", "note10", "--latency-ms", "0", "--store", "{store}"],
     "--latency-ms"),
    ("search-latency-negative", ["search", "--device", "note10", "--latency-ms", "-1", "--store", "{store}"],
     "--latency-ms"),
    ("search-latency-nan", ["search", "--device", "note10", "--latency-ms", "nan", "--store", "{store}"],
     "--latency-ms"),
    ("search-latency-inf", ["search", "--device", "note10", "--latency-ms", "inf", "--store", "{store}"],
     "--latency-ms"),
    ("search-macs-nan", ["search", "--device", "note10", "--macs", "nan", "--store", "{store}"], "--macs"),
    ("search-no-budget", ["search", "--device", "note10", "--store", "{store}"], "give a budget"),
    ("search-missing-store", ["search", "--device", "note10", "--latency-ms", "20", "--store", "{missing}"],
     "does not exist"),
    ("search-export-folder", ["search", "--device", "note10", "--latency-ms", "20", "--export", "{onnxdir}",
                              "--store", "{store}"], "is a folder"),
    ("search-export-suffix", ["search", "--device", "note10", "--latency-ms", "20", "--export", "{tmp}/x.pt",
                              "--store", "{store}"], "'.pt'"),
    ("search-export-under-file", ["search", "--device", "note10", "--latency-ms", "20", "--export",
                                  "{file}/x.onnx", "--store", "{store}"], "is not a folder"),
    ("search-seed-negative", ["search", "--device", "note10", "--latency-ms", "20", "--seed", "-1"], "--seed"),
    ("search-batch-0", ["search", "--device", "note10", "--latency-ms", "20", "--batch", "0"], "--batch"),
    ("search-batch-absent", ["search", "--device", "note10", "--latency-ms", "20", "--batch", "16",
                             "--store", "{store}"], "batch 16"),
    ("search-population-1", ["search", "--device", "note10", "--latency-ms", "20", "--population", "1"],
     "--population"),
    # -- pareto
    ("pareto-out-suffix", ["pareto", "--device", "note10", "--out", "{tmp}/f.gif", "--store", "{store}"], "'.gif'"),
    ("pareto-out-folder", ["pareto", "--device", "note10", "--out", "{figdir}", "--store", "{store}"],
     "is a folder"),
    ("pareto-csv-folder", ["pareto", "--device", "note10", "--out", "{tmp}/f.png", "--csv", "{dir}",
                           "--store", "{store}"], "is a folder"),
    ("pareto-csv-under-file", ["pareto", "--device", "note10", "--out", "{tmp}/f.png", "--csv", "{file}/f.csv",
                               "--store", "{store}"], "is not a folder"),
    ("pareto-missing-store", ["pareto", "--device", "note10", "--out", "{tmp}/f.png", "--store", "{missing}"],
     "does not exist"),
    # -- train, eval
    ("train-unknown-option", ["train", "--epochs", "3"], "No such option"),
    ("train-checkpoint-folder", ["train", "--checkpoint", "{dir}"], "is a folder"),
    ("train-export-under-file", ["train", "--checkpoint", "{tmp}/c.safetensors", "--export", "{file}/w"],
     "is not a folder"),
    ("eval-split", ["eval", "--split", "train"], "--split"),
    ("eval-seed-negative", ["eval", "--seed", "-1"], "--seed"),
    ("eval-limit-abc", ["eval", "--limit", "abc"], "--limit"),
    # -- store
    ("store-migrate-unknown-option", ["store", "migrate", "--bogus"], "No such option"),
    ("store-migrate-store-is-folder", ["store", "migrate", "--store", "{dir}"], "not a file"),
    ("store-copy-missing-source", ["store", "copy", "{missing}", "{tmp}/dst.sqlite"], "does not exist"),
    ("store-copy-missing-argument", ["store", "copy", "{store}"], "Missing argument"),
    ("store-info-missing", ["store", "info", "--store", "{missing}"], "does not exist"),
    # -- farm
    ("farm-submit-missing-argument", ["farm", "submit"], "Missing argument"),
    ("farm-submit-max-attempts-0", ["farm", "submit", "d", "--max-attempts", "0", "--store", "{missing}"],
     "--max-attempts"),
    ("farm-worker-lease-nan", ["farm", "worker", "--devices", "d", "--lease-s", "nan"], "--lease-s"),
    ("farm-worker-poll-0", ["farm", "worker", "--devices", "d", "--poll-s", "0"], "--poll-s"),
    ("farm-worker-null-duration-inf", ["farm", "worker", "--devices", "d", "--null-min-duration-s", "inf"],
     "--null-min-duration-s"),
    ("farm-worker-missing-store", ["farm", "worker", "--devices", "d", "--measurer", "null", "--exit-when-idle",
                                   "--store", "{missing}"], "does not exist"),
    ("farm-status-missing-store", ["farm", "status", "--store", "{missing}"], "does not exist"),
    # -- demo
    ("demo-unknown-option", ["demo", "--fast"], "No such option"),
    ("demo-seed-abc", ["demo", "--seed", "abc"], "--seed"),
    ("demo-out-under-file", ["demo", "--quick", "--out", "{file}/demo"], "{file}"),
]


@pytest.fixture(scope="module")
def entry() -> Path:
    assert ENTRY.is_file(), (f"{ENTRY} is missing: these tests run the installed command; install the project "
                             f"first (`pip install .`, as the README's test command does)")
    return ENTRY


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    home = tmp / "home"
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_CACHE_HOME=str(home / "cache"), OFA_BENCH_STORE=str(home / "default.sqlite"),
               OFA_BENCH_DEVICES=str(home / "devices"), OFA_BENCH_CACHE=str(home / "cache" / "ofa-bench"))
    return env


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: kind and content hash (files), link target (symlinks)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run(entry: Path, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(entry), *args], capture_output=True, text=True, timeout=120, env=_env(tmp),
                          cwd=tmp / "cwd")


def _one_error_line(r: subprocess.CompletedProcess, expect: str = "") -> str:
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert last.startswith("ofa-bench: error:"), r.stderr
    assert expect in last, f"expected {expect!r} in {last!r}"
    return last


def _one_entry_table(path: Path) -> Path:
    from bench.table import candidates
    from ofa_core.space import SearchSpace

    space = SearchSpace.get("ofa-mbv3-fmnist")
    e = candidates(space, [space.resolutions[0]])[0]
    path.write_text(f"resolution,key,latency_ms\n{e.resolution},{e.key},1.5\n")
    return path


@pytest.mark.parametrize("case_id,args,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation(entry, tmp_path, case_id, args, expect):
    from bench.store import open_store

    for folder in ("cwd", "home", "dir", "fig.png", "x.onnx"):
        (tmp_path / folder).mkdir()
    open_store(tmp_path / "store.sqlite").close()
    (tmp_path / "file").write_text("a regular file\n")
    (tmp_path / "dir" / "keep.txt").write_text("kept\n")
    names = {"tmp": tmp_path, "store": tmp_path / "store.sqlite", "file": tmp_path / "file",
             "dir": tmp_path / "dir", "missing": tmp_path / "missing.sqlite", "figdir": tmp_path / "fig.png",
             "onnxdir": tmp_path / "x.onnx", "table": _one_entry_table(tmp_path / "table.csv")}
    argv = [a.format(**names) for a in args]
    before = _snapshot(tmp_path)
    r = run(entry, argv, tmp_path)
    _one_error_line(r, expect.format(**names))
    assert _snapshot(tmp_path) == before, "a bad invocation changed files under the temporary folder"


def test_lut_export_ignores_planted_symlinks(entry, tmp_path):
    """The old fixed temporary names (OUT.part, R_lookup_table.yaml.part) hold symlinks to a victim file: the
    export succeeds and the victim is untouched (temporary files are made with mkstemp)."""
    from bench.table import candidates, import_table
    from bench.store import open_store
    from ofa_core.space import SearchSpace

    space = SearchSpace.get("ofa-mbv3-fmnist")
    entry0 = candidates(space, [space.resolutions[0]])[0]
    table = _one_entry_table(tmp_path / "t.csv")
    store = tmp_path / "s.sqlite"
    with open_store(store) as st:
        import_table(st, "dev", space, table)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "cwd").mkdir()
    out_csv = tmp_path / "out.csv"
    (tmp_path / "out.csv.part").symlink_to(victim)
    out_dir = tmp_path / "yaml"
    out_dir.mkdir()
    planted = out_dir / f"{entry0.resolution}_lookup_table.yaml.part"
    planted.symlink_to(victim)
    for fmt, out in (("csv", out_csv), ("yaml", out_dir)):
        r = run(entry, ["lut", "export", "dev", "--space", space.name, "--format", fmt, "--out", str(out),
                        "--store", str(store), "--partial"], tmp_path)  # a one-entry table: partial
        assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "out.csv.part").is_symlink() and planted.is_symlink()  # left alone, not written through
    assert entry0.key in out_csv.read_text()
    assert entry0.key in (out_dir / f"{entry0.resolution}_lookup_table.yaml").read_text()
    leftovers = [p.name for p in list(tmp_path.iterdir()) + list(out_dir.iterdir()) if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_output_in_unwritable_folder(entry, tmp_path):
    from bench.store import open_store

    (tmp_path / "cwd").mkdir()
    open_store(tmp_path / "s.sqlite").close()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for args in (["lut", "export", "d", "--format", "csv", "--out", str(locked / "t.csv")],
                     ["lut", "export", "d", "--out", str(locked / "yaml")],
                     ["pareto", "--device", "note10", "--out", str(locked / "f.png")],
                     ["predict", "--device", "note10", "--breakdown", str(locked / "b.png")],
                     ["search", "--device", "note10", "--latency-ms", "20", "--export", str(locked / "x.onnx")]):
            r = run(entry, [*args, "--store", str(tmp_path / "s.sqlite")], tmp_path)
            assert "permission denied" in _one_error_line(r)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_reading_commands_run_without_any_store_but_refuse_a_named_missing_one(entry, tmp_path):
    """A fresh user has no store yet: reading the published tables needs none. A store named by --store or
    $OFA_BENCH_STORE that does not exist is a mistake, and stays one."""
    (tmp_path / "cwd").mkdir()
    env = _env(tmp_path)
    env.pop("OFA_BENCH_STORE")
    default = Path(env["XDG_DATA_HOME"]) / "ofa-bench" / "store.sqlite"
    args = ["predict", "--device", "note10", "--space", "ofa-mbv3-w1.2", "--config", "smallest", "--json"]
    r = subprocess.run([str(entry), *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path / "cwd")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["table_sum_ms"] > 0
    assert not default.exists()  # read, not created
    named = subprocess.run([str(entry), *args, "--store", str(tmp_path / "typo.sqlite")], capture_output=True,
                           text=True, timeout=120, env=env, cwd=tmp_path / "cwd")
    _one_error_line(named, "does not exist")
    env["OFA_BENCH_STORE"] = str(tmp_path / "typo.sqlite")
    from_env = subprocess.run([str(entry), *args], capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path / "cwd")
    _one_error_line(from_env, "does not exist")
    assert not (tmp_path / "typo.sqlite").exists()
