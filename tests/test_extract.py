"""One-pass extraction into the store: correctness, provenance, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from embedcache.cli import main as cli_main
from embedcache.encoders import build_encoder
from embedcache.extract import extract
from embedcache.extract.batches import plan_batches
from embedcache.intake import load_manifest, read_image
from embedcache.store import (
    GroupLock,
    StoreLockedError,
    StoreMismatchError,
    StoreOverflowError,
    open_store,
)
from embedcache.store.layout import FEATURE_ARRAYS


def _run(manifest, spec, out, **kw):
    kw.setdefault("rows_per_shard", 4)
    kw.setdefault("batch_size", 3)
    kw.setdefault("num_workers", 0)
    return extract(manifest, spec, out, progress=False, log=lambda *_: None, **kw)


def _arrays(path, key):
    with open_store(path) as store:
        group = store.group(key)
        out = {name: np.asarray(group.array(name)[:]) for name in FEATURE_ARRAYS}
        out["done"], out["ids"] = group.done, group.ids
    return out


def test_plan_batches_never_cross_shards():
    pending = np.array([0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 17])
    batches = plan_batches(pending, rows_per_shard=4, batch_size=3)
    assert batches == [[0, 1, 2], [5, 6, 7], [8, 9, 10], [11], [12], [17]]


def test_extraction_matches_a_direct_forward_pass(phantom_manifest, tiny_encoder_spec, tmp_path):
    result = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    manifest = load_manifest(phantom_manifest)
    assert (result.written, result.skipped, result.n_rows) == (len(manifest), 0, len(manifest))
    stored = _arrays(tmp_path / "s.zarr", result.key)
    assert stored["ids"].tolist() == manifest.image_ids  # manifest order
    assert stored["done"].all()
    assert stored["grid16"].shape == (len(manifest), 4, 4, 32)
    assert stored["grid32"].shape == (len(manifest), 2, 2, 32)
    assert stored["global"].dtype == np.float16

    encoder = build_encoder(tiny_encoder_spec)
    rows = [0, 7, len(manifest) - 1]
    pixels = torch.stack(
        [encoder.preprocessing.prepare(read_image(manifest.paths[r])) for r in rows]
    )
    with torch.inference_mode():
        feats = encoder(pixels)
    expected = {"global": feats.embedding, "grid16": feats.grids[16], "grid32": feats.grids[32]}
    for name, values in expected.items():
        np.testing.assert_allclose(
            stored[name][rows].astype(np.float32), values.numpy(), rtol=2e-3, atol=2e-3
        )


def test_zarr_and_hdf5_hold_the_same_numbers(phantom_manifest, tiny_encoder_spec, tmp_path):
    a = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    b = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.h5")
    assert a.key == b.key
    za, hb = _arrays(tmp_path / "s.zarr", a.key), _arrays(tmp_path / "s.h5", b.key)
    for name in (*FEATURE_ARRAYS, "done", "ids"):
        np.testing.assert_array_equal(za[name], hb[name])


def test_provenance_is_recorded(phantom_manifest, tiny_encoder_spec, tmp_path):
    result = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    with open_store(tmp_path / "s.zarr") as store:
        attrs = store.group(result.key).attrs
    manifest = load_manifest(phantom_manifest)
    assert attrs["manifest"]["digest"] == manifest.digest()
    assert attrs["key_material"]["precision"] == "fp32"
    assert attrs["key_material"]["dtype"] == "float16"
    assert "sha256" in json.dumps(attrs["key_material"]["weights"])
    assert {"torch", "zarr", "numpy", "pydicom"} <= set(attrs["versions"])
    assert attrs["encoder"]["grids"]["16"] == {"stride": 14, "shape": [4, 4, 32]}


def test_second_run_resumes_and_writes_nothing(phantom_manifest, tiny_encoder_spec, tmp_path):
    first = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    before = _arrays(tmp_path / "s.zarr", first.key)
    again = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    assert (again.written, again.already_done) == (0, first.n_rows)
    after = _arrays(tmp_path / "s.zarr", first.key)
    for name in FEATURE_ARRAYS:
        np.testing.assert_array_equal(before[name], after[name])


def test_partial_group_resumes_to_the_same_store(phantom_manifest, tiny_encoder_spec, tmp_path):
    full = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "full.zarr")
    _run(phantom_manifest, tiny_encoder_spec, tmp_path / "part.zarr")
    with open_store(tmp_path / "part.zarr", "a") as store:  # forget shards 1 and 3
        group = store.group(full.key)
        done = group.done
        done[4:8] = done[12:16] = False
        group.array("done")[:] = done
        group.array("grid16")[4:8] = 0
    resumed = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "part.zarr")
    assert resumed.written == 8
    a, b = _arrays(tmp_path / "full.zarr", full.key), _arrays(tmp_path / "part.zarr", full.key)
    for name in FEATURE_ARRAYS:
        np.testing.assert_array_equal(a[name], b[name])


def test_another_manifest_is_refused_naming_the_difference(
    phantom_manifest, tiny_encoder_spec, tmp_path
):
    _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    table = pd.read_csv(phantom_manifest, dtype=str, keep_default_na=False)
    swapped = table.iloc[[1, 0, *range(2, len(table))]]
    other = phantom_manifest.parent / "swapped.csv"
    swapped.to_csv(other, index=False)
    with pytest.raises(StoreMismatchError, match=rf"row 1: image_id '{table.image_id[0]}'"):
        _run(other, tiny_encoder_spec, tmp_path / "s.zarr")


def test_changed_preprocessing_makes_a_new_group(phantom_manifest, tiny_encoder_dir, tmp_path):
    a = _run(phantom_manifest, f"hf:{tiny_encoder_dir}", tmp_path / "s.zarr")
    b = _run(phantom_manifest, f"hf:{tiny_encoder_dir}", tmp_path / "s.zarr", dtype="float32")
    assert a.key != b.key
    with open_store(tmp_path / "s.zarr") as store:
        assert sorted(store.keys()) == sorted([a.key, b.key])
        assert store.group(b.key).array("global").dtype == np.float32


def test_a_locked_group_is_refused(phantom_manifest, tiny_encoder_spec, tmp_path):
    first = _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")
    with GroupLock(tmp_path / "s.zarr", first.key), pytest.raises(StoreLockedError):
        _run(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr")


def test_float16_overflow_stops_with_advice(phantom_manifest, tiny_encoder_dir, tmp_path):
    encoder = build_encoder(f"hf:{tiny_encoder_dir}")
    with torch.no_grad():  # make the final layer norm output huge
        encoder.model.layernorm.weight.mul_(1e6)
    with pytest.raises(StoreOverflowError, match="--dtype float32"):
        _run(phantom_manifest, encoder, tmp_path / "s.zarr")
    wide = _run(phantom_manifest, encoder, tmp_path / "wide.zarr", dtype="float32")
    stored = _arrays(tmp_path / "wide.zarr", wide.key)
    assert np.isfinite(stored["global"]).all() and np.abs(stored["global"]).max() > 65504


def test_cli_extract_info_verify(phantom_manifest, tiny_encoder_spec, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    args = [
        "extract",
        str(phantom_manifest),
        "--encoder",
        tiny_encoder_spec,
        "--out",
        out,
        "--no-progress",
        "--workers",
        "0",
        "--rows-per-shard",
        "8",
    ]
    assert cli_main(args) == 0
    assert "21 written" in capsys.readouterr().out
    assert cli_main(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (group,) = info["groups"]
    assert (group["done"], group["rows"], group["skipped"]) == (21, 21, 0)
    assert group["grids"]["grid16"] == {"shape": [21, 4, 4, 32], "stride": 14}
    assert cli_main(["verify", out]) == 0
    assert ": ok:" in capsys.readouterr().out
    assert cli_main(["info", out]) == 0
    assert "grid16 4x4x32 (stride 14)" in capsys.readouterr().out


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    code = cli_main(
        [
            "extract",
            str(tmp_path / "nope.csv"),
            "--encoder",
            "dinov2-small",
            "--out",
            str(tmp_path / "s.zarr"),
            "--weights",
            "none",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and err.count("\n") == 1


def test_cli_explains_unavailable_hub_weights(phantom_manifest, tmp_path, capsys, offline):
    code = cli_main(
        [
            "extract",
            str(phantom_manifest),
            "--encoder",
            "rad-dino",
            "--out",
            str(tmp_path / "s.zarr"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "microsoft/rad-dino" in err and "--weights DIR" in err and "Traceback" not in err
