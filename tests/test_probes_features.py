"""FeatureSet: a store joined with its manifest by image id; the light ``probes`` import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from embedcache.store import GroupLayout, encoder_key, open_store
from probes.core.features import FeatureError, FeatureSet, resolve_encoder

GRID16, GRID32 = (2, 2, 3), (1, 1, 3)


def write_store(
    path,
    ids,
    global_features,
    *,
    preset="enc",
    skipped=(),
    unfinished=(),
    dtype="float32",
    rows_per_shard=4,
):
    """A store with one encoder group holding ``global_features`` (n, D) for ``ids``.

    Grids are filled with the row number. Rows in ``skipped`` are recorded as skipped, rows in
    ``unfinished`` are left not done. Returns the group key.
    """
    ids = np.asarray(ids)
    n, dim = global_features.shape
    layout = GroupLayout(
        n_rows=n,
        global_dim=dim,
        grid_shapes={16: GRID16, 32: GRID32},
        dtype=dtype,
        rows_per_shard=rows_per_shard,
    )
    key = encoder_key(preset, {"preset": preset, "dim": dim})
    with open_store(path, "a") as store:
        group = store.create_group(key, layout, ids, {"encoder": {"preset": preset}})
        rows = np.arange(n, dtype=np.float32)
        group.write_rows(
            0,
            {
                "global": global_features.astype(np.float32),
                "grid16": np.broadcast_to(rows[:, None, None, None], (n, *GRID16)).copy(),
                "grid32": np.broadcast_to(rows[:, None, None, None], (n, *GRID32)).copy(),
            },
        )
        done = np.setdiff1d(np.arange(n), np.asarray(unfinished, dtype=int))
        group.mark_done(done)
        skip = np.asarray(skipped, dtype=int)
        group.mark_skipped(skip, {str(ids[i]): "unreadable DICOM" for i in skip})
    return key


def write_manifest(path, ids, patients, **columns):
    table = pd.DataFrame(
        {"image_id": ids, "path": [f"{i}.png" for i in ids], "patient_id": patients}
    )
    for name, values in columns.items():
        table[name] = values
    table.to_csv(path, index=False)
    return path


@pytest.fixture
def cohort(tmp_path):
    """8 images of 4 patients; the store lists them in reverse manifest order."""
    ids = np.array([f"img{i:02d}" for i in range(8)])
    patients = np.repeat([f"p{i}" for i in range(4)], 2)
    features = np.arange(8 * 5, dtype=np.float32).reshape(8, 5)
    key = write_store(tmp_path / "s.zarr", ids[::-1], features[::-1])
    manifest = write_manifest(
        tmp_path / "m.csv", ids, patients, label=[0, 1] * 4, flag=[True, False] * 4
    )
    return tmp_path / "s.zarr", manifest, key, ids, patients, features


def test_join_is_by_id_not_by_row_order(cohort):
    store, manifest, key, ids, patients, features = cohort
    fs = FeatureSet.open(store, manifest)
    assert fs.key == key and fs.feature == "global" and len(fs) == 8
    assert fs.ids.tolist() == ids.tolist()  # manifest order
    assert fs.rows.tolist() == list(range(7, -1, -1))  # the store holds them reversed
    assert fs.patient_ids.tolist() == patients.tolist()
    assert fs.table["image_id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(fs.load(), features)
    np.testing.assert_array_equal(fs.load([5, 0, 5]), features[[5, 0, 5]])
    assert fs.load().dtype == np.float32
    assert fs.excluded == 0 and fs.shape == (8, 5)


def test_grid_features_and_labels(cohort):
    store, manifest, *_ = cohort
    fs = FeatureSet.open(store, manifest, feature="grid16")
    grid = fs.load([2])
    assert grid.shape == (1, *GRID16) and np.all(grid == 5)  # img02 is store row 5
    assert fs.labels("label").tolist() == [0, 1] * 4
    assert fs.labels("flag").tolist() == [1, 0] * 4  # booleans as 0/1


def test_label_errors_name_the_column_and_rows(cohort, tmp_path):
    store, manifest, _, ids, patients, _ = cohort
    fs = FeatureSet.open(store, manifest)
    with pytest.raises(FeatureError, match=r"no label column 'pneumo'.*'label'.*'flag'"):
        fs.labels("pneumo")
    holes = write_manifest(tmp_path / "h.csv", ids, patients, label=[0, 1, None, 1, 0, 1, 0, 1])
    with pytest.raises(FeatureError, match=r"empty for 1 image.*'img02'"):
        FeatureSet.open(store, holes).labels("label")


def test_unknown_feature_is_refused(cohort):
    store, manifest, *_ = cohort
    with pytest.raises(FeatureError, match="unknown feature 'grid8'.*global, grid16, grid32"):
        FeatureSet.open(store, manifest, feature="grid8")


def test_manifest_rows_missing_from_the_store_are_an_error(cohort, tmp_path):
    store, _, _, ids, patients, _ = cohort
    more = write_manifest(tmp_path / "more.csv", [*ids, "new1"], [*patients, "p9"])
    with pytest.raises(FeatureError, match=r"1 of 9 manifest images are not in .*'new1'"):
        FeatureSet.open(store, more)


def test_store_rows_missing_from_the_manifest_need_allow_subset(cohort, tmp_path):
    store, _, _, ids, patients, features = cohort
    fewer = write_manifest(tmp_path / "fewer.csv", ids[[6, 1]], patients[[6, 1]])
    with pytest.raises(
        FeatureError, match=r"6 image\(s\) the manifest does not list.*allow_subset"
    ):
        FeatureSet.open(store, fewer)
    fs = FeatureSet.open(store, fewer, allow_subset=True)
    assert fs.ids.tolist() == ["img06", "img01"]
    np.testing.assert_array_equal(fs.load(), features[[6, 1]])


def test_skipped_rows_are_excluded_and_counted(tmp_path):
    ids = np.array(["a", "b", "c", "d"])
    write_store(tmp_path / "s.zarr", ids, np.eye(4, dtype=np.float32), skipped=[1])
    manifest = write_manifest(tmp_path / "m.csv", ids, ["p1", "p2", "p3", "p4"])
    fs = FeatureSet.open(tmp_path / "s.zarr", manifest)
    assert fs.ids.tolist() == ["a", "c", "d"] and fs.excluded == 1
    assert fs.excluded_reasons == {"b": "unreadable DICOM"}
    np.testing.assert_array_equal(fs.load(), np.eye(4)[[0, 2, 3]])


def test_unfinished_extraction_is_an_error(tmp_path):
    ids = np.array(["a", "b", "c"])
    write_store(tmp_path / "s.zarr", ids, np.eye(3, dtype=np.float32), unfinished=[2])
    manifest = write_manifest(tmp_path / "m.csv", ids, ["p1", "p2", "p3"])
    with pytest.raises(FeatureError, match=r"never extracted.*'c'.*embedcache extract again"):
        FeatureSet.open(tmp_path / "s.zarr", manifest)


def test_hdf5_store_and_float16_storage(tmp_path):
    ids = np.array(["a", "b", "c"])
    values = np.array([[0.5, 1.0], [2.0, -3.0], [0.25, 8.0]], dtype=np.float32)
    write_store(tmp_path / "s.h5", ids, values, dtype="float16")
    manifest = write_manifest(tmp_path / "m.csv", ids, ["p1", "p2", "p3"])
    fs = FeatureSet.open(tmp_path / "s.h5", manifest)
    out = fs.load([2, 0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values[[2, 0]])


def test_encoder_resolution():
    keys = ["rad-dino-0123456789ab", "rad-dino-large-ba9876543210", "dinov2-aaaaaaaaaaaa"]
    assert resolve_encoder(keys, "dinov2") == keys[2]  # unique prefix
    assert resolve_encoder(keys, "rad-dino") == keys[0]  # preset name among prefixes
    assert resolve_encoder(keys, keys[1]) == keys[1]
    assert resolve_encoder(keys[:1], None) == keys[0]
    with pytest.raises(FeatureError, match="3 encoder groups; choose one of: rad-dino-0123"):
        resolve_encoder(keys, None)
    with pytest.raises(FeatureError, match="matches 2 groups"):
        resolve_encoder(keys, "rad")
    with pytest.raises(FeatureError, match="no encoder group 'siglip'.*dinov2-aaaa"):
        resolve_encoder(keys, "siglip")


def test_two_groups_need_an_encoder(cohort):
    store, manifest, key, ids, *_ = cohort
    other = write_store(store, ids, np.ones((8, 2), np.float32), preset="other")
    with pytest.raises(FeatureError, match="2 encoder groups"):
        FeatureSet.open(store, manifest)
    assert FeatureSet.open(store, manifest, encoder="other").key == other
    assert FeatureSet.open(store, manifest, encoder=key).shape == (8, 5)


def test_probes_imports_without_the_encoder_zoo():
    code = (
        "import sys, probes, probes.linear.probe, probes.core.features, probes.core.splits, probes.core.metrics, "
        "probes.core.results, probes.cli, probes.segmentation.probe, probes.analysis.stats, probes.analysis.subgroups, "
        "probes.analysis.shortcuts, probes.report, probes.study\n"
        "heavy = [m for m in ('transformers', 'timm', 'open_clip') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
