"""Outputs never destroy what they did not create: devices, FIFOs and the process's streams are written into, a
symlink's target is written and the link kept, and a full device is an error, not a silent success."""

import json
import os
import stat
import threading

import pytest

from cllmfs_trainer.files import atomic_write_text


def test_a_regular_file_is_replaced_whole_and_keeps_its_mode(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    path.chmod(0o640)
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind


def test_a_symlink_is_followed_and_kept(tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    atomic_write_text(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert received == ["through the pipe\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a FIFO, not a plain file in its place


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_full_device_is_reported():
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write_text("/dev/full", "x" * 100_000)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_dev_null_stays_a_device():
    atomic_write_text("/dev/null", "discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_planted_symlink_at_the_old_temporary_name_is_never_followed(tmp_path):
    """The run record was once written through the fixed name `cllmfs_run.json.tmp`; a link planted there (or at any
    name) must not redirect the write outside the folder: temporary names are unique and created exclusively."""
    from cllmfs_trainer.data.registry import EntityType
    from cllmfs_trainer.run_folder import RunFolder

    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cllmfs_run.json.tmp").symlink_to(outside)
    person = EntityType("person", "person", "names of people")
    run = RunFolder(run_dir, "base", "adapter", 1, "intra", "wnut17", 1, [person], [person])
    run.save()
    assert outside.read_text() == "not yours"
    assert json.loads((run_dir / "cllmfs_run.json").read_text())["dataset"] == "wnut17"
    assert (run_dir / "cllmfs_run.json.tmp").is_symlink()  # left as it was, not written through
