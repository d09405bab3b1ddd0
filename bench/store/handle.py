"""How a use case gets hold of the store it was given.

Use cases (`profile`, `validate`, `search`, the table loaders) take a `store` that is either an open `Store` or
its address (an SQLite path or a `postgresql://` URL). A caller that runs several steps (the demo, a benchmark)
opens the store once and hands the same `Store` to each step; a command hands over the address it parsed.
`using_store` gives the step a `Store` either way and closes only what it opened itself.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from bench.store.api import Store, open_store
from bench.store.postgres import is_postgres_url

#: What a use case accepts as its store: an open handle, or the address to open.
StoreLike = Union[Store, str, os.PathLike]


def store_exists(target: StoreLike) -> bool:
    """True for an open Store or a URL; for a path, whether the file is there (reading never creates one)."""
    return isinstance(target, Store) or is_postgres_url(str(target)) or Path(target).exists()


@contextmanager
def using_store(target: Optional[StoreLike], *, create: bool = True, if_exists: bool = False,
                thread: bool = False) -> Iterator[Optional[Store]]:
    """A `Store` for the duration of one step.

    An open `Store` is yielded as it is and left open (its owner closes it); with `thread=True` the step runs in
    a thread of its own, so it gets a second connection to the same store (`Store.reopen`), closed at the end.
    An address is opened here (`create` as in `open_store`) and closed at the end. With `if_exists`, a `None`
    target or an SQLite path that does not exist yields None instead of creating a store (the readers)."""
    if target is None or (if_exists and not store_exists(target)):
        if not if_exists:
            raise TypeError("using_store needs a store, got None")
        yield None
        return
    if isinstance(target, Store):
        if not thread:
            yield target
            return
        store = target.reopen()
    else:
        store = open_store(target, create=create)
    try:
        yield store
    finally:
        store.close()


def store_address(target: StoreLike) -> str:
    """The path or (password-free) URL of a store or store address, for messages and reports."""
    return target.target if isinstance(target, Store) else str(target)
