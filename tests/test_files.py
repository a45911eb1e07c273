"""Atomic outputs: the whole file or nothing, and outputs that are inputs refused."""

from __future__ import annotations

import os
import stat

import pytest

from engine.log.files import OutputError, atomic_output, check_output, write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as handle:
            handle.write("new and partial")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_finished_write_replaces_the_file_with_the_usual_mode(tmp_path):
    target = tmp_path / "out.bin"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_output_that_is_an_input_is_refused(tmp_path):
    log = tmp_path / "x.db"
    log.write_bytes(b"log")
    link = tmp_path / "alias.db"
    link.symlink_to(log)
    with pytest.raises(OutputError, match="also an input"):
        check_output(link, log)
    with pytest.raises(OutputError, match="directory"):
        check_output(tmp_path, log)
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "missing" / "out.jsonl", log)
    assert check_output(tmp_path / "new.jsonl", log) == tmp_path / "new.jsonl"
