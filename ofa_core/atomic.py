"""Atomic file writes: a temporary file made with `mkstemp` beside the target, then `os.replace`.

`mkstemp` creates a new file under an unpredictable name (O_EXCL), so nothing planted in the folder beforehand
(a symlink at `OUT.part`) can redirect the write; `os.replace` then swaps the finished file in, replacing a
symlink at the target itself rather than following it, and a crash leaves the old file whole.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: permissions of a written file (mkstemp creates 0600; results are meant to be shared like any other file)
FILE_MODE = 0o644


@contextmanager
def _temporary(path: Path, mode: int) -> Iterator[tuple[int, Path]]:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(name)
    try:
        yield fd, tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """A binary file object on a new temporary file beside `path`; it replaces `path` when the block ends
    without an error, and is removed otherwise."""
    with _temporary(Path(path), mode) as (fd, _):
        with os.fdopen(fd, "wb") as f:
            yield f


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """For a writer that takes a file name (pandas, torch.onnx, zipfile): the name of a new, empty temporary
    file beside `path`, which replaces `path` when the block ends without an error."""
    with _temporary(Path(path), mode) as (fd, tmp):
        os.close(fd)
        yield tmp
