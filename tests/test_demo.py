"""`ofa-bench demo --quick` end to end on local-cpu with the shipped model (about 2-3 minutes here: slow)."""
import json

import pytest

from ofa_core.accuracy import default_predictor_path
from ofa_core.checkpoint import shipped_weights_path

SPACE = "ofa-mbv3-fmnist"


@pytest.mark.slow
def test_demo_quick_writes_a_report(tmp_path, capsys):
    if not shipped_weights_path(SPACE).is_file() or default_predictor_path(SPACE) is None:
        pytest.skip("no shipped ofa-mbv3-fmnist supernet/predictor")
    from bench.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is the one JSON document; steps and progress went to stderr
    for step in ("profile", "validate", "search", "pareto"):
        assert f"   {step}: done in " in captured.err
    assert doc["report"] == str(out / "report.md")
    assert doc["store"] == str(out / "store.sqlite") and (out / "store.sqlite").is_file()
    for name in ("report.md", "report.json", "pareto.png", "validate.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert len(doc["searches"]) == 3
    budgets = [s["budget"]["latency_ms"] for s in doc["searches"]]
    assert budgets == sorted(budgets)
    for s in doc["searches"]:
        assert s["predicted_latency_ms"] <= s["budget"]["latency_ms"] + 1e-9
        assert s["confirm"]["measured_latency_ms"] > 0 and s["export"]["weights"] == "shipped"
    text = (out / "report.md").read_text()
    assert "![Pareto front](pareto.png)" in text and "local-cpu" in text
    # one measured number per subnet in report.md, report.json and front.csv (the table's value)
    import csv

    rows = list(csv.DictReader((out / "front.csv").open()))
    on_disk = json.loads((out / "report.json").read_text())
    for e in on_disk["extremes"]:
        value = e["measured_latency_ms"]
        assert f"| {value:.3f} |" in text
        assert {float(r["measured_latency_ms"]) for r in rows
                if r["config"] == e["config_string"] and r["measured_latency_ms"]} == {float(f"{value:.6g}")}
    front = on_disk["front"]
    assert front["ends"]["top"]["front_accuracy"] >= front["ends"]["top"]["search_accuracy"]
    assert front["latency_ms"][0] >= front["floor"]["fastest_measured_ms"] - 1e-9


def test_demo_refuses_an_unusable_output_folder(tmp_path, capsys):
    from bench.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ofa-bench: error:")


def test_demo_scores_chosen_subnets_with_progress(monkeypatch):
    """The accuracy step on a tiny stand-in data set: each chosen subnet's top-1 equals `evaluate_subnet`'s,
    and progress is reported after each."""
    import torch

    from bench.demo import _score_chosen
    from ofa_core import data
    from ofa_core.checkpoint import load_supernet
    from ofa_core.evaluate import evaluate_subnet
    from ofa_core.space import SearchSpace

    if not shipped_weights_path(SPACE).is_file():
        pytest.skip("no shipped ofa-mbv3-fmnist supernet")
    gen = torch.Generator().manual_seed(0)

    def split(n):
        return data.Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen),
                          torch.randint(0, 10, (n,), generator=gen))

    fake = data.FashionMNIST(split(64), split(16), split(48))
    monkeypatch.setattr(data, "load_fmnist", lambda *a, **k: fake)
    space = SearchSpace.get(SPACE)
    cfgs = [space.smallest(24), space.largest(36)]
    chosen = [{"config": c.to_ofa_dict()} for c in cfgs]
    calls = []
    _score_chosen(space, chosen, lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    net = load_supernet(space)
    assert [s["test_top1"] for s in chosen] == [evaluate_subnet(net, c, fake.test, fake.train) for c in cfgs]
