"""Store format 2: row counts in the group metadata (O(1) summaries), dimension names and the
image-id coordinate (xarray opens a store without this package), and format-1 stores read
as they are and upgraded by the next extraction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr.storage

from embedcache.cli import main as cli_main
from embedcache.extract import extract
from embedcache.store import GroupLayout, GroupLock, encoder_key, open_store
from embedcache.store.layout import FEATURE_ARRAYS
from embedcache.store.verify import group_summary, store_summary, verify_group
from probes.core.features import FeatureSet

DIMS = {
    "global": ("image", "channel"),
    "grid16": ("image", "y16", "x16", "channel16"),
    "grid32": ("image", "y32", "x32", "channel32"),
    "done": ("image",),
    "skipped": ("image",),
}
TINY = GroupLayout(
    n_rows=10,
    global_dim=3,
    grid_shapes={16: (2, 2, 4), 32: (1, 1, 5)},
    dtype="float32",
    rows_per_shard=4,
)


def _extract(manifest, spec, out):
    return extract(
        manifest,
        spec,
        out,
        rows_per_shard=4,
        batch_size=3,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
    )


def _contents(path):
    with open_store(path) as store:
        (key,) = store.keys()
        group = store.group(key)
        arrays = {name: np.asarray(group.array(name)[:]) for name in FEATURE_ARRAYS}
        arrays["ids"], arrays["done"], arrays["skipped"] = group.ids, group.done, group.skipped
        return key, arrays


def _tiny_store(path, layout=TINY):
    """A group of ``layout`` with every feature row filled, rows 0..7 done, row 9 skipped."""
    rng = np.random.default_rng(0)
    material = {"preset": "enc", "dim": layout.global_dim}
    key = encoder_key("enc", material)
    attrs = {"encoder": {"preset": "enc"}, "key_material": material}
    with open_store(path, "a") as store:
        group = store.create_group(
            key, layout, np.array([f"img{i:02d}" for i in range(layout.n_rows)]), attrs
        )
        shapes = layout.feature_shapes()
        group.write_rows(0, {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()})
        group.mark_done(np.arange(8))
        group.mark_skipped(np.array([9]), {"img09": "unreadable"})
    return key


@pytest.fixture(scope="module")
def extracted(phantom_manifest, tiny_encoder_spec, tmp_path_factory):
    """The phantom cohort extracted once: ``(store path, key, arrays)``."""
    out = tmp_path_factory.mktemp("format") / "s.zarr"
    _extract(phantom_manifest, tiny_encoder_spec, out)
    return (out, *_contents(out))


def test_xarray_opens_a_store_indexed_by_image_id(extracted):
    path, key, arrays = extracted
    with warnings.catch_warnings():  # "no consolidated metadata": zarr v3 stores have none
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = xr.open_zarr(path, group=key)  # the command researchers type, nothing of ours
    assert ds.indexes["image"].tolist() == arrays["ids"].tolist()
    for name, dims in DIMS.items():
        assert ds[name].dims == dims
        np.testing.assert_array_equal(ds[name].values, arrays[name], err_msg=name)
    one = str(arrays["ids"][5])
    np.testing.assert_array_equal(ds["grid16"].sel(image=one).values, arrays["grid16"][5])
    assert ds.attrs["counts"] == {"rows": 21, "done": 21, "skipped": 0}


def test_hdf5_arrays_carry_the_same_dimensions_as_scales(tmp_path):
    key = _tiny_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        node = f[key]
        assert node["image"].is_scale
        assert node["image"].asstr()[:].tolist() == [f"img{i:02d}" for i in range(10)]
        for name, dims in DIMS.items():
            assert tuple(d.label for d in node[name].dims) == dims
            assert node[name].dims[0][0] == node["image"]
    with open_store(tmp_path / "s.h5") as store:
        assert store.group(key).ids[3] == "img03"


def test_counts_are_recorded_as_rows_are_flagged_and_verify_recounts(tmp_path):
    path = tmp_path / "s.zarr"
    key = _tiny_store(path)
    with open_store(path, "a") as store:
        group = store.group(key)
        counts = group.counts()
        assert (counts.rows, counts.done, counts.skipped, counts.scanned) == (10, 9, 1, False)
        assert counts.to_attrs() == group.scan_counts().to_attrs()
        assert verify_group(group).problems == ["1 of 10 rows not done yet (resume extraction)"]
        group.array("done")[0:4] = False  # behind the counts' back
        problems = verify_group(group).problems
    assert any(
        "recorded counts (9 done, 1 skipped) differ from the flags (5 done, 1 skipped)" in p
        for p in problems
    ), problems


def test_summary_state_follows_the_writing_mark_and_the_lock(tmp_path):
    path = tmp_path / "s.zarr"
    key = _tiny_store(path)
    with open_store(path, "a") as store:
        group = store.group(key)
        assert group_summary(group, store)["state"] == "incomplete"
        with GroupLock(path, key):
            group.begin_writing(group.done)
            assert group_summary(group, store)["state"] == "writing"
        summary = group_summary(group, store)  # marked, but nobody holds the lock: killed
        assert summary["state"] == "interrupted" and summary["done"] == 9
        group.mark_done(np.array([8]))
        group.end_writing(recount=False)
        summary = group_summary(group, store)
        assert (summary["state"], summary["done"], summary["writing"]) == ("complete", 10, None)


def test_a_summary_reads_the_same_files_at_any_row_count(tmp_path, monkeypatch):
    """Local zarr reads during ``store_summary``: equal for 256 and 25,600 rows (the flags
    alone are 4 and 400 chunk files)."""
    reads = []
    real_get = zarr.storage.LocalStore.get

    async def counted_get(self, key, *args, **kwargs):
        reads.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counted_get)
    counted = []
    for n in (256, 25_600):
        layout = GroupLayout(
            n_rows=n, global_dim=3, grid_shapes={16: (1, 1, 2), 32: (1, 1, 2)}, rows_per_shard=64
        )
        path = tmp_path / f"n{n}.zarr"
        with open_store(path, "a") as store:
            group = store.create_group("enc-000000000000", layout, np.arange(n).astype(str), {})
            group.mark_done(np.arange(n))
        reads.clear()
        with open_store(path) as store:
            (summary,) = store_summary(store)["groups"]
        assert (summary["done"], summary["rows"], summary["counts"]) == (n, n, "recorded")
        counted.append(sorted(reads))
    assert counted[0] == counted[1] and not any("/c/" in key for key in counted[0])


def test_info_and_verify_never_import_torch(tmp_path):
    path = tmp_path / "s.zarr"
    _tiny_store(path)
    code = (
        "import sys\n"
        "from embedcache.cli import main\n"
        f"codes = [main(['info', {str(path)!r}]), main(['info', {str(path)!r}, '--json']),\n"
        f"         main(['verify', {str(path)!r}])]\n"
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'open_clip',\n"
        "         'embedcache.encoders', 'embedcache.extract') if m in sys.modules]\n"
        "print(codes, heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[0, 0, 1] []"  # verify: row 8 not done


def _to_format_1(path: Path, key: str) -> None:
    """Rewrite a local format-2 store as format 1 wrote it: ids array ``ids``, no dimension
    names, no recorded counts, root and group without ``format_version`` 2."""
    group = path / key
    (group / "image").rename(group / "ids")
    for meta in group.glob("*/zarr.json"):
        doc = json.loads(meta.read_text())
        doc.pop("dimension_names", None)
        meta.write_text(json.dumps(doc, indent=2))
    for meta, drop in (
        (group / "zarr.json", ("format_version", "counts", "writing")),
        (path / "zarr.json", ()),
    ):
        doc = json.loads(meta.read_text())
        for name in drop:
            doc["attributes"].pop(name, None)
        if meta.parent == path:
            doc["attributes"]["format_version"] = 1
        meta.write_text(json.dumps(doc, indent=2))


def test_a_format_1_store_reads_and_the_next_extract_upgrades_it(
    extracted, phantom_manifest, tiny_encoder_spec, tmp_path, capsys
):
    _, key, reference = extracted
    path = tmp_path / "old.zarr"
    _extract(phantom_manifest, tiny_encoder_spec, path)
    _to_format_1(path, key)
    with open_store(path, "a") as store:  # and a run of format 1 was killed in shard 2
        store.group(key).array("done")[8:12] = False
        store.group(key).array("grid16")[8:12] = 0

    with pytest.raises(KeyError, match="dimension_names"):  # as the issue reported
        xr.open_zarr(path, group=key, consolidated=False)
    with open_store(path) as store:  # our API reads it as it is
        group = store.group(key)
        assert group.format_version == 1
        assert group.ids.tolist() == reference["ids"].tolist()
        np.testing.assert_array_equal(
            group.read_rows("global", [3, 0]), reference["global"][[3, 0]]
        )
    assert cli_main(["info", str(path), "--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)["groups"]
    assert (summary["done"], summary["counts"], summary["state"]) == (17, "scanned", "incomplete")
    assert cli_main(["info", str(path)]) == 0
    assert "store format 1" in capsys.readouterr().out

    result = _extract(phantom_manifest, tiny_encoder_spec, path)
    assert (result.written, result.already_done) == (4, 17)
    assert not (path / key / "ids").exists()
    _, upgraded = _contents(path)
    for name, values in reference.items():
        np.testing.assert_array_equal(upgraded[name], values, err_msg=name)
    ds = xr.open_zarr(path, group=key, consolidated=False)
    assert ds.indexes["image"].tolist() == reference["ids"].tolist()
    with open_store(path) as store:
        group = store.group(key)
        assert group.format_version == 2 and group.counts().complete
        assert verify_group(group).ok
    assert len(FeatureSet.open(path, phantom_manifest)) == 21
