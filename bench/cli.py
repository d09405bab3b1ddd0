"""The `ofa-bench` command. Each area registers its commands from `bench.commands.<area>`.

The conventions every command keeps, whatever typer version resolves: a usage mistake prints the usage line
and one `ofa-bench: error: ...` line and exits 2; an error the user can fix (`OFABenchError`) prints one such
line and exits 2; Ctrl-C exits 130 after the command has ended its run as interrupted. typer (0.26 and later)
carries its own copy of click and raises its own exception classes, so only typer's public names are used.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import traceback

import typer

from ofa_core.errors import OFABenchError

# Areas whose `register(app)` adds commands; a missing module is skipped so that parts can land separately.
COMMAND_MODULES = ("devices", "profile", "lut", "predict", "validate", "nightly", "search", "pareto", "train", "store",
                   "farm", "demo")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, cron, systemd): ended the way Ctrl-C ends a command, run marked interrupted."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()

app = typer.Typer(
    name="ofa-bench", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Once-for-All supernets, per-device latency tables and hardware-aware search.",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"bench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.commands.{name}":
                continue
            raise
        module.register(app)


def error_line(message: str) -> str:
    """One line, whatever the message held."""
    return " ".join(str(message).split()) or "unknown error"


def _show_typer_error(exc: Exception) -> int:
    """A usage mistake or another error typer raised: the usage line (when there is one) and one error line."""
    ctx = getattr(exc, "ctx", None)
    code = int(getattr(exc, "exit_code", 1))
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # a bare group: its help is the answer
        print(ctx.get_help(), file=sys.stderr)
        return EXIT_USAGE
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
        print(f"Try '{ctx.command_path} --help' for help.", file=sys.stderr)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    print(f"ofa-bench: error: {error_line(message)}", file=sys.stderr)
    return EXIT_USAGE if code == EXIT_USAGE or ctx is not None else max(code, 1)


def _debug_traceback() -> None:
    """With OFA_BENCH_TRACEBACK=1, where a one-line error came from (for bug reports)."""
    if os.environ.get("OFA_BENCH_TRACEBACK") == "1":
        traceback.print_exc()


def _stop_device_calls() -> int:
    """Whatever device calls are still in flight (a worker thread's runner) end with the command; later calls
    in this process (a caller of `main`) are allowed again."""
    from agents.transports.base import clear_interrupt, interrupt_calls

    try:
        return interrupt_calls()
    finally:
        clear_interrupt()


def main(argv: list[str] | None = None) -> int:
    _register_all()
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(command, args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(command, args: list[str]) -> int:
    try:
        # Parse and invoke without typer's standalone handling, which would turn Ctrl-C into a returned code.
        with command.make_context("ofa-bench", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("ofa-bench: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt as exc:
        _debug_traceback()
        stopped = _stop_device_calls()
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"ofa-bench: {what}" + (f" (stopped {stopped} device call(s))" if stopped else ""), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OFABenchError as exc:
        _debug_traceback()
        print(f"ofa-bench: error: {error_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except typer.TyperException as exc:
        return _show_typer_error(exc)
    except BrokenPipeError:
        return 1
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
