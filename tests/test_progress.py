"""Progress on stderr, never stdout: the plain lines used off a terminal, the rich bars, and the demo's steps
(with `--json`, stdout stays one JSON document)."""
import json
from types import SimpleNamespace

from bench.progress import StderrProgress


def test_plain_lines_every_few_seconds_and_at_the_end(capsys, monkeypatch):
    clock = iter([0.0, 0.0, 1.0, 6.0, 7.0, 20.0])  # made, entered, then one reading per call
    monkeypatch.setattr("bench.progress.time", SimpleNamespace(monotonic=lambda: next(clock)))
    with StderrProgress(unit="subnets", every_s=5.0, live=False) as bar:
        report = bar.callback("validate")
        for done in (1, 2, 3, 4):  # at t = 1, 6, 7, 20: t = 6 is due (5 s after the start), and the end
            report(done, 4)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["validate: 2/4 subnets, 6 s, ETA 6 s", "validate: 4/4 subnets, 20 s"]


def test_update_advances_per_task_and_disabled_is_silent(capsys):
    with StderrProgress(unit="entries", every_s=1e9, live=False) as bar:
        bar.update("a", 2, 5)
        bar.update("b", 5, 5)
        bar.update("a", 3, 5)
    with StderrProgress(enabled=False) as off:
        off.update("a", 5, 5)
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["b: 5/5 entries, 0 s", "a: 5/5 entries, 0 s"]


def test_rich_bars_draw_on_stderr(capsys):
    with StderrProgress(unit="entries", live=True) as bar:
        bar.update("local-cpu", 3, 3)
        print("a result line")  # stdout is not redirected through the bars
    out, err = capsys.readouterr()
    assert out == "a result line\n" and "local-cpu" in err and "3/3" in err


def test_demo_steps_log_their_time_on_stderr(capsys):
    from bench.demo import DemoSteps

    steps = DemoSteps()
    with steps("search", "searching"):
        pass
    out, err = capsys.readouterr()
    assert out == "" and set(steps.times) == {"search"}
    assert err.splitlines() == ["== searching", f"   search: done in {steps.times['search']:.1f} s"]


def test_demo_json_keeps_stdout_one_document(tmp_path, capsys, monkeypatch):
    """The command wiring, with a stand-in for the minutes-long run: steps and bars on stderr, JSON on stdout."""
    import bench.demo
    from bench.cli import main

    def quick_run(out, store, settings, log, predictor_path=None):
        steps = bench.demo.DemoSteps(log)
        with steps("validate", "validating"), StderrProgress(unit="subnet timings") as bar:
            for done in range(1, 4):
                bar.callback("validate")(done, 3)
        return {"report": str(out / "report.md"), "steps_s": steps.times}

    monkeypatch.setattr(bench.demo, "run_demo", quick_run)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["steps_s"].keys() == {"validate"}
    assert "== validating" in err and "validate: 3/3 subnet timings" in err and "validate: done in" in err
