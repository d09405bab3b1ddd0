"""The anchors shipped in tests/data/anchors are byte-identical to ../shared/anchors (when that is present), so
a plain clone tests against exactly the data CI uses."""
import hashlib

import pytest
from _anchors import SHARED, SHIPPED_ANCHORS


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_shipped_anchors_equal_shared():
    shared = SHARED / "anchors"
    if not shared.is_dir():
        pytest.skip(f"{shared} not present: nothing to compare the shipped copy with")
    theirs = _digests(shared)
    ours = {k: v for k, v in _digests(SHIPPED_ANCHORS).items() if k not in ("NOTICE.md", ".gitattributes")}
    assert theirs, f"{shared} holds no files"
    assert ours == theirs  # same files, same sha256


def test_shipped_anchors_are_complete():
    note10 = SHIPPED_ANCHORS / "ofa-mbv3-w12-note10"
    names = {p.name for p in note10.iterdir()}
    assert {"LICENSE.CompOFA", "README.md", "acc_predictor.pth", "latency_table_note10"} <= names
    assert len(list((note10 / "latency_table_note10").glob("*_lookup_table.yaml"))) == 17
    assert (SHIPPED_ANCHORS / "NOTICE.md").is_file()
