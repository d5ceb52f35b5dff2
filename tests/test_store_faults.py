"""Faults of the store's location while extracting: a full disk, a read-only location, a mount
that vanishes. Each stops with one line naming the store and the cause (no traceback), keeps
every finished shard, and (once the cause is gone) the same command resumes to a store
bitwise identical to an uninterrupted one.

Where the tests run as root they use real size-limited tmpfs mounts; elsewhere the full disk is
an ENOSPC injected at the file layer (the shard writer's ``open``) and the read-only location
a folder without write permission.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import embedcache.store.shards as shards
from embedcache.cli import main as cli_main
from embedcache.extract import extract
from embedcache.store import StoreGroup, open_store
from embedcache.store.layout import FEATURE_ARRAYS

ARRAYS = ("ids", *FEATURE_ARRAYS, "done", "skipped")
RUN_ATTRS = ("created", "command", "extraction")  # legitimately differ between two runs
PAGE_KB = 4


def _args(manifest, spec, out):
    return [
        "extract",
        str(manifest),
        "--encoder",
        spec,
        "--out",
        str(out),
        "--rows-per-shard",
        "4",
        "--batch-size",
        "3",
        "--workers",
        "0",
        "--no-progress",
    ]


def _contents(path):
    with open_store(path) as store:
        (key,) = store.keys()
        group = store.group(key)
        return {name: np.asarray(group.array(name)[:]) for name in ARRAYS}, group.attrs


def _assert_same_store(got, want):
    for name in ARRAYS:
        np.testing.assert_array_equal(got[0][name], want[0][name], err_msg=name)
    assert set(got[1]) == set(want[1])
    for name in set(got[1]) - set(RUN_ATTRS):
        assert got[1][name] == want[1][name], name


def _one_line_error(capsys, *needles):
    """stderr of the last command: one line (besides the model library's progress bar while
    the encoder loads), no traceback, holding ``needles``."""
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line and "\r" not in line]  # bars redraw
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def reference(phantom_manifest, tiny_encoder_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults-ref") / "s.zarr"
    extract(
        phantom_manifest,
        tiny_encoder_spec,
        out,
        rows_per_shard=4,
        batch_size=3,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
    )
    return _contents(out)


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, size_kb, readonly=False)``: a tmpfs of that size under ``tmp_path``, or
    ``None`` where this process cannot mount (not root, no mount command, a container without
    the right). Everything mounted is lazily unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size_kb: int, readonly: bool = False) -> Path | None:
        where = tmp_path / name
        where.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return None
        options = f"size={size_kb}k" + (",ro" if readonly else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        )
        if proc.returncode != 0:
            return None
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill_after(monkeypatch, shard_writes: int):
    """Make the shard writer's file layer raise ENOSPC from its ``shard_writes``-th file on."""
    real_open, calls = open, {"n": 0}

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".partial"):
            calls["n"] += 1
            if calls["n"] >= shard_writes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(shards, "open", full_disk_open, raising=False)


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_a_full_disk_stops_in_one_line_and_resumes_bitwise(
    how, phantom_manifest, tiny_encoder_spec, reference, tmpfs, tmp_path, monkeypatch, capsys
):
    if how == "tmpfs":
        # The group's metadata takes ~10 pages, each 4-row shard 5 (grid16 2, grid32, global,
        # done): 27 pages fill up in the third or fourth of the six shards.
        mount = tmpfs("disk", 27 * PAGE_KB)
        if mount is None:
            pytest.skip("cannot mount a tmpfs here (not root?): the injected variant covers it")
        store = mount / "s.zarr"
    else:
        store = tmp_path / "s.zarr"
        _fill_after(monkeypatch, shard_writes=7)  # 3 arrays per shard: fails in shard 3
    assert cli_main(_args(phantom_manifest, tiny_encoder_spec, store)) == 2
    err = _one_line_error(capsys, f"cannot write to store {store}", "no space left")
    with open_store(store) as s:
        group = s.group(s.keys()[0])
        done = group.done
        counts = group.counts()
    assert 0 < done.sum() < len(done), "the disk filled up during the extraction"
    assert f"{done.sum()} of 21 rows done" in err  # the kept rows, from the flags
    # The recorded count is bumped after each shard's flags, and the stopped run records exact
    # counts when the metadata still fits. Where a real disk fills decides whether it does (the
    # group's metadata size moves that point): then the count may lag the flags, never lead them,
    # and stays marked as a lower bound until the resume recounts it (asserted below).
    assert counts.done == done.sum() if counts.exact else counts.done <= done.sum()
    got = _contents(store)
    for name in FEATURE_ARRAYS:  # every finished shard is kept, whole
        np.testing.assert_array_equal(got[0][name][done], reference[0][name][done])

    if how == "tmpfs":  # free space
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)
    else:
        monkeypatch.undo()
    assert cli_main(_args(phantom_manifest, tiny_encoder_spec, store)) == 0
    assert f"{done.sum()} already done" in capsys.readouterr().out
    _assert_same_store(_contents(store), reference)
    with open_store(store) as s:
        counts = s.group(s.keys()[0]).counts()
    assert (counts.done, counts.exact) == (21, True)


def test_a_read_only_location_is_one_line(
    phantom_manifest, tiny_encoder_spec, tmpfs, tmp_path, capsys
):
    mount = tmpfs("ro", 1024, readonly=True)
    if mount is None:
        if os.geteuid() == 0:
            pytest.skip("root writes through file permissions and cannot mount here")
        mount = tmp_path / "ro"
        mount.chmod(0o555)
    store = mount / "s.zarr"
    assert cli_main(_args(phantom_manifest, tiny_encoder_spec, store)) == 2
    cause = "the location is read-only" if os.geteuid() == 0 else "permission denied"
    _one_line_error(capsys, f"cannot write to store {store}", cause)


def test_a_vanished_mount_is_one_line_and_never_written_beneath_it(
    phantom_manifest, tiny_encoder_spec, tmpfs, monkeypatch, capsys
):
    mount = tmpfs("mnt", 16 * 1024)
    if mount is None:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    store = mount / "s.zarr"
    real_mark_done, calls = StoreGroup.mark_done, {"n": 0}

    def unmount_after_two_shards(self, rows):
        real_mark_done(self, rows)
        calls["n"] += 1
        if calls["n"] == 2:  # the disk goes away under the running extraction
            subprocess.run(["umount", "-l", str(mount)], check=True)

    monkeypatch.setattr(StoreGroup, "mark_done", unmount_after_two_shards)
    assert cli_main(_args(phantom_manifest, tiny_encoder_spec, store)) == 2
    _one_line_error(capsys, f"cannot write to store {store}", "vanished")
    # the empty mount point was not filled with a stray copy of the store's remaining shards
    assert not list(mount.rglob("c/*"))
