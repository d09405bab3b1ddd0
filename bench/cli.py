"""The `ofa-bench` command. Each area registers its commands from `bench.commands.<area>`."""
from __future__ import annotations

import importlib
import sys

import click
import typer

from ofa_core.errors import OFABenchError

# Areas whose `register(app)` adds commands; a missing module is skipped so that parts can land separately.
COMMAND_MODULES = ("devices", "profile", "lut", "predict", "validate", "nightly", "search", "train", "store",
                   "farm", "demo")

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


def main(argv: list[str] | None = None) -> int:
    _register_all()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="ofa-bench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("ofa-bench: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("ofa-bench: interrupted", file=sys.stderr)
        return 130
    except OFABenchError as exc:
        print(f"ofa-bench: error: {error_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
