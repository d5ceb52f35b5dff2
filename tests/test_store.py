"""The store: both formats, fast row reads, dtype safety, locks and verification."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr

from embedcache.store import (
    GroupLayout,
    GroupLock,
    StoreLockedError,
    StoreOverflowError,
    encoder_key,
    open_store,
)
from embedcache.store.lock import lock_path
from embedcache.store.verify import verify_group

LAYOUT = GroupLayout(
    n_rows=10, global_dim=8, grid_shapes={16: (4, 4, 6), 32: (2, 2, 6)}, rows_per_shard=4
)


def _features(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "global": rng.standard_normal((n, 8)).astype(np.float32),
        "grid16": rng.standard_normal((n, 4, 4, 6)).astype(np.float32),
        "grid32": rng.standard_normal((n, 2, 2, 6)).astype(np.float32),
    }


def _make(path, layout=LAYOUT, key="enc-000000000000"):
    store = open_store(path, "a")
    ids = np.array([f"{i:03d}" for i in range(layout.n_rows)])
    material = {"weights": "x"}
    key = encoder_key("enc", material)
    group = store.create_group(
        key, layout, ids, {"key_material": material, "encoder": {"preset": "enc"}}
    )
    return store, group


@pytest.fixture(params=["zarr", "hdf5"])
def store_path(request, tmp_path):
    return tmp_path / ("s.zarr" if request.param == "zarr" else "s.h5")


def test_round_trip_keeps_ids_values_and_flags(store_path):
    store, group = _make(store_path)
    feats = _features(4)
    group.write_rows(4, feats)
    group.mark_done(np.arange(4, 8))
    group.mark_skipped(np.array([9]), {"009": "truncated DICOM"})
    store.close()

    with open_store(store_path) as store:
        assert store.format == ("hdf5" if store_path.suffix == ".h5" else "zarr")
        group = store.group(store.keys()[0])
        assert group.ids.tolist() == [f"{i:03d}" for i in range(10)]  # "001" stays a string
        assert group.done.tolist() == [False] * 4 + [True] * 4 + [False, True]
        assert group.skipped.tolist() == [False] * 9 + [True]
        assert group.skip_reasons() == {"009": "truncated DICOM"}
        for name, values in feats.items():
            np.testing.assert_array_equal(
                group.read_rows(name, [4, 5, 6, 7]), values.astype(np.float16)
            )
        np.testing.assert_array_equal(group.read_rows("grid16", [0]), 0)  # never written


def test_arrays_are_plain_library_objects(tmp_path):
    """A notebook needs nothing of ours to read the store."""
    store, group = _make(tmp_path / "s.zarr")
    feats = _features(4)
    group.write_rows(0, feats)
    store.close()
    key = store.keys()[0]
    raw = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[key]
    assert isinstance(raw["grid16"], zarr.Array)
    np.testing.assert_array_equal(raw["grid16"][2], feats["grid16"][2].astype(np.float16))

    store, group = _make(tmp_path / "s.h5")
    group.write_rows(0, feats)
    store.close()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        np.testing.assert_array_equal(f[key]["global"][1], feats["global"][1].astype(np.float16))
        assert json.loads(f[key].attrs["layout"])["rows_per_shard"] == 4


def test_sharding_bounds_file_count(tmp_path):
    layout = GroupLayout(130, 8, {16: (4, 4, 6), 32: (2, 2, 6)}, rows_per_shard=64)
    store, group = _make(tmp_path / "s.zarr", layout)
    group.write_rows(0, _features(130))
    shard_files = [
        f
        for _, _, files in os.walk(tmp_path / "s.zarr" / group.key / "grid16" / "c")
        for f in files
    ]
    assert len(shard_files) == 3  # 130 images in ceil(130 / 64) shard files, not 130 files


def test_fast_reader_matches_zarr_bitwise(tmp_path):
    layout = GroupLayout(50, 8, {16: (4, 4, 6), 32: (2, 2, 6)}, rows_per_shard=8)
    store, group = _make(tmp_path / "s.zarr", layout)
    group.write_rows(0, _features(20, seed=1))  # shards 0-1 full, shard 2 partly written
    group.write_rows(33, _features(5, seed=2))  # shard 4 partly; shard 3 and 5-6 absent
    rows = np.random.default_rng(0).permutation(50)
    for name in ("grid16", "grid32", "global"):
        fast = group.read_rows(name, rows)
        expected = np.stack([group.array(name)[int(r)] for r in rows])
        np.testing.assert_array_equal(fast, expected)
    assert group._readers["grid16"].fast  # the shard fast path really ran
    assert not group._readers["global"].fast  # unsharded arrays go through zarr


def test_row_views_are_the_rows_without_a_copy_and_never_write_the_file(tmp_path):
    layout = GroupLayout(50, 8, {16: (4, 4, 6), 32: (2, 2, 6)}, rows_per_shard=8)
    store, group = _make(tmp_path / "s.zarr", layout)
    group.write_rows(0, _features(20, seed=1))
    rows = [17, 3, 9, 25]  # 25: never written
    views = group.row_views("grid16", rows)
    np.testing.assert_array_equal(np.stack(views), group.read_rows("grid16", rows))
    assert isinstance(views[0].base, np.memmap) or isinstance(views[0].base.base, np.memmap)
    before = group.read_rows("grid16", [17]).copy()
    views[0][...] = 7  # copy-on-write: private to this process, the shard file is unchanged
    fresh = open_store(tmp_path / "s.zarr").group(group.key)
    np.testing.assert_array_equal(fresh.read_rows("grid16", [17]), before)


def test_damaged_shard_index_is_detected(tmp_path):
    store, group = _make(tmp_path / "s.zarr")
    group.write_rows(0, _features(4))
    shard = tmp_path / "s.zarr" / group.key / "grid16" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # flip a bit inside the index
    shard.write_bytes(bytes(data))
    with pytest.raises(OSError, match="checksum"):
        open_store(tmp_path / "s.zarr").group(group.key).read_rows("grid16", [1])


def test_float16_overflow_is_refused_not_written_as_inf(store_path):
    store, group = _make(store_path)
    feats = _features(4)
    feats["grid16"][2, 0, 0, 0] = 1e5
    with pytest.raises(StoreOverflowError, match="float32"):
        group.write_rows(0, feats)
    assert not np.isinf(group.read_rows("grid16", [2])).any()

    wide = GroupLayout(4, 8, {16: (4, 4, 6), 32: (2, 2, 6)}, dtype="float32", rows_per_shard=4)
    store2, group2 = _make(store_path.with_name("wide" + store_path.suffix), wide)
    group2.write_rows(0, feats)
    assert group2.read_rows("grid16", [2])[0, 0, 0, 0] == 1e5


def test_lock_excludes_a_second_writer(tmp_path):
    path = tmp_path / "s.zarr"
    with GroupLock(path, "k"):
        assert lock_path(path, "k").exists()
        with pytest.raises(StoreLockedError, match=str(os.getpid())):
            GroupLock(path, "k").acquire()
    assert not lock_path(path, "k").exists()


def test_stale_lock_of_dead_process_is_cleared(tmp_path):
    path = tmp_path / "s.zarr"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock_path(path, "k").write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)})
    )
    with GroupLock(path, "k") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_lock_of_other_host_needs_break_lock(tmp_path):
    path = tmp_path / "s.zarr"
    lock_path(path, "k").write_text(json.dumps({"host": "gpu-node-7", "pid": 1}))
    with pytest.raises(StoreLockedError, match="gpu-node-7.*--break-lock"):
        GroupLock(path, "k").acquire()
    with GroupLock(path, "k", break_lock=True) as lock:
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()


def test_verify_finds_nonfinite_rows_and_tampered_keys(store_path):
    store, group = _make(
        store_path, GroupLayout(4, 8, {16: (4, 4, 6), 32: (2, 2, 6)}, rows_per_shard=4)
    )
    feats = _features(4)
    feats["grid32"][1, 0, 0, 0] = np.nan
    group.write_rows(0, feats)
    group.mark_done(np.arange(4))
    report = verify_group(group)
    assert not report.ok
    assert report.nonfinite_rows == {"grid32": [1]}
    group.update_attrs({"key_material": {"weights": "other"}})
    assert any("digest" in p for p in verify_group(group).problems)


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no store"):
        open_store(tmp_path / "nothing.zarr")


def test_fast_shard_writes_read_back_identically_through_zarr(tmp_path):
    """Whole shards are written as one buffer; zarr itself must read them as it wrote them."""
    layout = GroupLayout(10, 8, {16: (4, 4, 6), 32: (2, 2, 6)}, rows_per_shard=4)
    fast_store, fast = _make(tmp_path / "fast.zarr", layout)
    ref_store, ref = _make(tmp_path / "ref.zarr", layout)
    feats = _features(10, seed=3)
    fast.write_rows(0, {k: v[:8] for k, v in feats.items()})  # shards 0-1, whole
    fast.write_rows(8, {k: v[8:] for k, v in feats.items()})  # the short last shard
    for name, values in feats.items():
        ref.array(name)[:] = values.astype(np.float16)  # zarr's own codec pipeline
    fast_store.close()
    key = fast.key
    for name in feats:
        ours = zarr.open_group(str(tmp_path / "fast.zarr"), mode="r")[key][name][:]
        theirs = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")[key][name][:]
        np.testing.assert_array_equal(ours, theirs)
    shards = sorted((tmp_path / "fast.zarr" / key / "grid16" / "c").iterdir())
    assert [p.name for p in shards] == ["0", "1", "2"]
    assert not list((tmp_path / "fast.zarr").rglob("*.partial"))


def test_partial_shard_writes_go_through_zarr(tmp_path):
    store, group = _make(tmp_path / "s.zarr")
    feats = _features(3)
    group.write_rows(1, feats)  # rows 1-3: not a whole shard
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[group.key]["grid16"][1:4],
        feats["grid16"].astype(np.float16),
    )
    np.testing.assert_array_equal(group.read_rows("grid16", [0]), 0)


def test_a_key_is_made_and_taken_apart_in_one_place():
    """parse_key inverts encoder_key (presets with dashes included); other names stay whole."""
    from embedcache.store import parse_key

    for preset in ("rad-dino", "dinov2-with-registers-small", "hf_tmp_x-1"):
        key = encoder_key(preset, {"weights": preset})
        assert parse_key(key) == (preset, key[-12:])
    assert parse_key("planted") == ("planted", "")
    assert parse_key("enc-ABCDEF123456") == ("enc-ABCDEF123456", "")  # not a digest
