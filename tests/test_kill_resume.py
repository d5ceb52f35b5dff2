"""SIGKILL at several points of an extraction, resume, and get a bitwise identical store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedcache.extract import extract
from embedcache.store import open_store
from embedcache.store.layout import FEATURE_ARRAYS

CHILD = Path(__file__).with_name("kill_child.py")


def _extract(manifest, spec, store):
    return extract(
        manifest,
        spec,
        store,
        rows_per_shard=4,
        batch_size=3,
        num_workers=1,
        progress=False,
        log=lambda *_: None,
    )


def _contents(path):
    with open_store(path) as store:
        (key,) = store.keys()
        group = store.group(key)
        arrays = {name: np.asarray(group.array(name)[:]) for name in FEATURE_ARRAYS}
        arrays["done"], arrays["skipped"] = group.done, group.skipped
        return key, arrays


def _child(manifest, spec, store, point):
    return subprocess.run(
        [sys.executable, str(CHILD), str(manifest), spec, str(store), point],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture(scope="module")
def reference(phantom_manifest, tiny_encoder_spec, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    _extract(phantom_manifest, tiny_encoder_spec, path)
    return _contents(path)


@pytest.mark.parametrize(
    "store_name, points",
    [
        ("s.zarr", ["create"]),
        ("s.zarr", ["write:2"]),  # between the global array and the grids of shard 2
        ("s.zarr", ["put:7", "done:3"]),  # half-way through a metadata file; after shard 3 is done
        ("s.zarr", ["shardput:5"]),  # half-way through writing the fifth shard file
        ("s.zarr", ["done:1", "write:1", "done:2"]),  # three kills in a row, each resumed
        ("s.h5", ["create", "write:2", "done:3"]),
    ],
)
def test_sigkill_then_resume_is_bitwise_identical(
    store_name, points, phantom_manifest, tiny_encoder_spec, reference, tmp_path
):
    store = tmp_path / store_name
    for point in points:
        proc = _child(phantom_manifest, tiny_encoder_spec, store, point)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _, killed = _contents(store)
    assert not killed["done"].all()  # the kill really interrupted the run
    result = _extract(phantom_manifest, tiny_encoder_spec, store)  # clears the stale lock
    assert result.already_done == killed["done"].sum()
    key, resumed = _contents(store)
    ref_key, expected = reference
    assert key == ref_key
    for name in (*FEATURE_ARRAYS, "done", "skipped"):
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    if store.is_dir():
        assert not list(store.rglob("*.partial")), "half-written files must be cleared on resume"


def test_sigkill_at_a_random_moment_of_a_real_run(
    phantom_manifest, tiny_encoder_spec, reference, tmp_path
):
    """The CLI in a subprocess, killed once some shards are done, while workers decode."""
    store = tmp_path / "s.zarr"
    cmd = [
        sys.executable,
        "-m",
        "embedcache",
        "extract",
        str(phantom_manifest),
        "--encoder",
        tiny_encoder_spec,
        "--out",
        str(store),
        "--rows-per-shard",
        "4",
        "--batch-size",
        "3",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open_store(store) as s:
                if s.keys() and s.group(s.keys()[0]).done.sum() >= 4:
                    break
        except Exception:  # the store is still being created
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _extract(phantom_manifest, tiny_encoder_spec, store)
    _, resumed = _contents(store)
    for name in (*FEATURE_ARRAYS, "done"):
        np.testing.assert_array_equal(resumed[name], reference[1][name], err_msg=name)
