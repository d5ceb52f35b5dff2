"""Tests for embedcache.intake.manifest: reading, path resolution, digest and validation."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest

from embedcache.intake.manifest import Manifest, ManifestError, load_manifest

HEADER = "image_id,path,patient_id,label,view\n"


def make_cohort(folder: Path, n: int = 3) -> Path:
    """A cohort folder: images/img{i}.png (placeholder bytes; the manifest never decodes them)
    and manifest.csv with zero-padded ids and relative paths. Returns the manifest path."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        (folder / "images" / f"img{i}.png").write_bytes(b"placeholder")
        rows.append(f"00{i},images/img{i}.png,0{i % 2},{i % 2},PA\n")
    manifest = folder / "manifest.csv"
    manifest.write_text(HEADER + "".join(rows))
    return manifest


def manifest_error(path: Path, **kwargs) -> str:
    with pytest.raises(ManifestError) as err:
        load_manifest(path, **kwargs)
    message = str(err.value)
    assert str(path) in message
    return message


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    manifest = load_manifest(make_cohort(tmp_path / "cohort"))
    assert isinstance(manifest, Manifest)
    assert len(manifest) == 3
    assert manifest.root == tmp_path / "cohort"
    assert manifest.source == tmp_path / "cohort" / "manifest.csv"
    assert manifest.paths == [str(tmp_path / "cohort" / "images" / f"img{i}.png") for i in range(3)]
    assert all(os.path.isabs(p) for p in manifest.paths)


def test_ids_stay_text_and_other_columns_keep_their_types(tmp_path: Path) -> None:
    manifest = load_manifest(make_cohort(tmp_path))
    assert manifest.image_ids == ["000", "001", "002"]
    assert manifest.patient_ids == ["00", "01", "00"]
    assert manifest.table["label"].tolist() == [0, 1, 0]
    assert pd.api.types.is_integer_dtype(manifest.table["label"])
    assert list(manifest.table.columns) == ["image_id", "path", "patient_id", "label", "view"]


def test_root_argument_and_absolute_paths(tmp_path: Path) -> None:
    make_cohort(tmp_path / "data")
    elsewhere = tmp_path / "lists" / "m.tsv"
    elsewhere.parent.mkdir()
    absolute = tmp_path / "data" / "images" / "img2.png"
    elsewhere.write_text(
        "image_id\tpath\tpatient_id\n"
        "a\timages/img0.png\tp1\n"
        "b\t./images/../images/img1.png\tp2\n"
        f"c\t{absolute}\tp3\n"
    )
    manifest = load_manifest(elsewhere, root=tmp_path / "data")
    assert manifest.root == tmp_path / "data"
    assert manifest.paths == [str(tmp_path / "data" / "images" / f"img{i}.png") for i in range(3)]
    assert manifest.resolve("path", "masks/m0.png") == str(tmp_path / "data" / "masks" / "m0.png")
    assert manifest.resolve("path", str(absolute)) == str(absolute)


def test_siim_style_header_with_spaces_is_stripped(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    (tmp_path / "siim.csv").write_text(
        "image_id, path, patient_id, EncodedPixels\n"
        "1.2.3,images/img0.png,p1, -1\n"
        "1.2.4,images/img1.png,p2,557374 2 1015 8\n"
    )
    manifest = load_manifest(tmp_path / "siim.csv")
    assert list(manifest.table.columns) == ["image_id", "path", "patient_id", "EncodedPixels"]
    assert manifest.image_ids == ["1.2.3", "1.2.4"]
    assert manifest.table["EncodedPixels"].tolist() == [" -1", "557374 2 1015 8"]  # untouched


def test_mask_column_resolves_against_root(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    (tmp_path / "m.csv").write_text(
        HEADER.strip() + ",mask\n000,images/img0.png,p,1,PA,masks/0.png\n"
    )
    manifest = load_manifest(tmp_path / "m.csv", root=tmp_path)
    mask = manifest.table["mask"].iat[0]
    assert mask == "masks/0.png"  # other columns are left as written
    assert manifest.resolve("mask", mask) == str(tmp_path / "masks" / "0.png")
    with pytest.raises(ManifestError, match="no column 'segmentation'"):
        manifest.resolve("segmentation", mask)


def test_parquet_round_trip(tmp_path: Path) -> None:
    from_csv = load_manifest(make_cohort(tmp_path))
    table = pd.read_csv(tmp_path / "manifest.csv", dtype={"image_id": str, "patient_id": str})
    table.to_parquet(tmp_path / "manifest.parquet", index=False)
    from_parquet = load_manifest(tmp_path / "manifest.parquet")
    pd.testing.assert_frame_equal(from_parquet.table, from_csv.table, check_dtype=False)
    assert from_parquet.digest() == from_csv.digest()


def test_integer_parquet_ids_become_text(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    pd.DataFrame(
        {"image_id": [7, 8], "path": ["images/img0.png", "images/img1.png"], "patient_id": [1, 1]}
    ).to_parquet(tmp_path / "ints.parquet")
    manifest = load_manifest(tmp_path / "ints.parquet")
    assert (manifest.image_ids, manifest.patient_ids) == (["7", "8"], ["1", "1"])


def test_digest_survives_moving_the_folder_and_label_changes(tmp_path: Path) -> None:
    original = load_manifest(make_cohort(tmp_path / "a"))
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = load_manifest(tmp_path / "b" / "manifest.csv")
    assert moved.paths != original.paths
    assert moved.digest() == original.digest()

    relabelled = tmp_path / "b" / "relabelled.csv"
    lines = (tmp_path / "b" / "manifest.csv").read_text().splitlines()
    relabelled.write_text(
        "\n".join(
            [lines[0]] + [line.replace(",PA", ",AP").replace(",0,", ",1,") for line in lines[1:]]
        )
    )
    changed = load_manifest(relabelled)
    assert changed.table["view"].tolist() == ["AP"] * 3
    assert changed.digest() == original.digest()

    reordered = tmp_path / "b" / "reordered.csv"
    reordered.write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n")
    assert load_manifest(reordered).digest() != original.digest()

    renamed = tmp_path / "b" / "renamed.csv"
    renamed.write_text("\n".join([lines[0], lines[1].replace("000,", "0,", 1), *lines[2:]]) + "\n")
    assert load_manifest(renamed).digest() != original.digest()


def test_digest_is_the_same_for_relative_and_absolute_spellings(tmp_path: Path) -> None:
    relative = load_manifest(make_cohort(tmp_path))
    absolute = tmp_path / "absolute.csv"
    absolute.write_text(
        HEADER
        + "".join(f"00{i},{tmp_path}/images/img{i}.png,0{i % 2},{i % 2},PA\n" for i in range(3))
    )
    assert load_manifest(absolute).digest() == relative.digest()


def test_missing_required_columns_are_named_with_those_present(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_id,file,label\na,x.png,1\n")
    message = manifest_error(tmp_path / "m.csv")
    assert "missing required column(s) 'path', 'patient_id'" in message
    assert "columns present: 'image_id', 'file', 'label'" in message


def test_empty_manifests(tmp_path: Path) -> None:
    (tmp_path / "header_only.csv").write_text(HEADER)
    assert "has no data rows" in manifest_error(tmp_path / "header_only.csv")
    (tmp_path / "blank.csv").write_text("")
    assert "empty file" in manifest_error(tmp_path / "blank.csv")


def test_duplicate_image_ids_name_both_rows(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    (tmp_path / "dup.csv").write_text(
        "image_id,path,patient_id\nx,images/img0.png,p\ny,images/img1.png,p\nx,images/img2.png,q\n"
    )
    message = manifest_error(tmp_path / "dup.csv")
    assert "image_id 'x' in data rows 1 and 3" in message


def test_empty_cells_name_row_image_id_and_column(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    (tmp_path / "holes.csv").write_text(
        "image_id,path,patient_id\n"
        "a,images/img0.png,p\n"
        "b,,p\n"
        ",images/img2.png,q\n"
        "d,images/img1.png,NA\n"
    )
    message = manifest_error(tmp_path / "holes.csv")
    assert "3 empty cell(s)" in message
    assert "data row 2 (image_id 'b'), column 'path'" in message
    assert "data row 3, column 'image_id'" in message
    assert "data row 4 (image_id 'd'), column 'patient_id'" in message


def test_missing_files_are_listed_with_a_count(tmp_path: Path) -> None:
    manifest_path = make_cohort(tmp_path, n=14)
    for i in range(1, 13):
        (tmp_path / "images" / f"img{i}.png").unlink()
    message = manifest_error(manifest_path)
    assert "12 of 14 image files not found" in message
    assert f"data row 2 (image_id '001'): {tmp_path / 'images' / 'img1.png'}" in message
    assert "data row 11 (image_id '0010')" in message  # the tenth listed
    assert "data row 12 " not in message and "and 2 more" in message
    # Allowed when the extractor is to record them as skips.
    assert len(load_manifest(manifest_path, check_files=False)) == 14


def test_unsupported_and_absent_manifests(tmp_path: Path) -> None:
    (tmp_path / "m.xlsx").write_bytes(b"PK")
    assert "unsupported format" in manifest_error(tmp_path / "m.xlsx")
    assert "file not found" in manifest_error(tmp_path / "none.csv")


def test_patient_id_can_be_optional_but_is_then_reported_absent(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    (tmp_path / "m.csv").write_text("image_id,path\na,images/img0.png\n")
    manifest = load_manifest(tmp_path / "m.csv", required=("image_id", "path"))
    assert manifest.image_ids == ["a"]
    with pytest.raises(ManifestError, match="no patient_id column"):
        _ = manifest.patient_ids


def test_manifest_error_pickles(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as err:
        load_manifest(tmp_path / "none.csv")
    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == str(err.value)
