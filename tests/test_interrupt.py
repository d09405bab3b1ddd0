"""Ctrl-C: a command ends its run as interrupted, stops the runner processes it started (they run in sessions
of their own, out of the terminal's reach) and exits 130 with one line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agents.transports import base
from agents.transports.local import LocalTransport
from bench.workers import Workers

ENTRY_POINT = Path(sys.executable).parent / "ofa-bench"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_interrupt_calls_stops_a_call_running_in_a_worker_thread(tmp_path):
    transport = LocalTransport(workdir=str(tmp_path))
    box = {}

    def work():
        try:
            box["result"] = transport.run(["sleep", "30"], timeout_s=60)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    workers = Workers()
    workers.start("sleeper", work)
    deadline = time.monotonic() + 10
    while base.calls_in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    try:
        assert base.interrupt_calls() == 1
        workers.wait()
        with pytest.raises(base.Interrupted):  # a new call is refused while the interrupt stands
            transport.run(["true"])
    finally:
        base.clear_interrupt()
    assert time.monotonic() - t0 < 5
    assert isinstance(box.get("error"), base.Interrupted), box
    assert base.calls_in_flight() == 0
    assert transport.run(["true"]).returncode == 0  # and accepted again once cleared


def test_workers_wait_survives_an_interrupted_wait():
    """The main thread's wait is interrupted; a second wait still waits for the worker (Thread.join did not)."""
    release = threading.Event()
    ended = threading.Event()
    workers = Workers()
    workers.start("slow", lambda: (release.wait(5), ended.set()))
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        workers.wait()
    assert not workers.all_done()
    release.set()
    workers.wait()
    assert ended.is_set() and workers.all_done()


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("command", [
    ["profile", "local-cpu", "--space", "ofa-mbv3-fmnist", "--resolutions", "24"],
])
def test_ctrl_c_marks_the_run_interrupted_and_stops_the_runner(tmp_path, command, sig, code, word):
    """Ctrl-C, and SIGTERM (timeout, cron, systemd) the same way with its own exit status."""
    assert ENTRY_POINT.exists(), f"{ENTRY_POINT} missing: install the project first (the README's test command does)"
    store = tmp_path / "store.sqlite"
    env = {**os.environ, "OFA_BENCH_CACHE": str(tmp_path / "cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "OFA_BENCH_STORE": str(store)}
    proc = subprocess.Popen([str(ENTRY_POINT), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    runners: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # until a runner process is measuring
        runners = _children(proc.pid)
        if runners:
            break
        time.sleep(0.05)
    assert runners, f"no runner process started: {proc.communicate()[1][-500:]}"
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-800:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"ofa-bench: {word}")
    time.sleep(0.2)
    assert not [p for p in runners if _alive(p)], "runner processes left behind"
    from bench.store import open_store

    st = open_store(str(store))
    try:
        statuses = [run["status"] for run in st.runs()]
    finally:
        st.close()
    assert statuses and set(statuses) == {"interrupted"}, statuses


def test_ctrl_c_in_the_main_thread_kills_the_device_process(tmp_path):
    """validate, nightly and confirm call the device from the main thread: Ctrl-C arrives there, and the process
    (in a session of its own, out of the terminal's reach) must not outlive the command."""
    transport = LocalTransport(workdir=str(tmp_path))
    pid_file = tmp_path / "pid"
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        transport.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout_s=60)
    pid = int(pid_file.read_text())
    time.sleep(0.1)
    assert not _alive(pid)
    assert base.calls_in_flight() == 0
