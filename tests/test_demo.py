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
    doc = json.loads(capsys.readouterr().out)
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


def test_demo_refuses_an_unusable_output_folder(tmp_path, capsys):
    from bench.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ofa-bench: error:")
