"""The command line run in this process (`bench.cli.main`), for tests that check what it prints."""
from __future__ import annotations


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `ofa-bench ARGS` run in this process."""
    from bench.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error(rc: int, err: str, needle: str = "") -> None:
    """Exit 2 and one error line on stderr, holding `needle`."""
    assert rc == 2 and err.startswith("ofa-bench: error:") and err.count("\n") == 1, err
    assert needle in err, err
