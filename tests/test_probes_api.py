"""Probes as a library: the light top-level API, run functions equal to their commands, Run
folders (this format and older ones), and one patient bootstrap behind every CI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_probes_features import write_manifest, write_store

import probes
from probes.cli import main
from probes.core.run import RUN_FORMAT, Run, RunFolderError

HEAVY = ("torch", "matplotlib", "transformers", "timm", "open_clip", "numba")


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


#: Top-level names that are torch code themselves: torch loads when they are used.
TORCH_NAMES = {"SegmentationProbe", "run_seg", "AttentiveProbe"}


def test_import_probes_and_embedcache_is_light():
    """Importing loads nothing heavy; every top-level name resolves, and none but the torch
    estimators loads torch (no name loads matplotlib or an encoder library)."""
    assert not _modules_after("import probes, embedcache") & set(HEAVY)
    names = ", ".join(f"probes.{n}" for n in sorted(set(probes.__all__) - TORCH_NAMES))
    loaded = _modules_after(
        f"import probes, embedcache\nnames = [{names}]\n"
        "assert callable(probes.finetune) and callable(probes.report)\n"
        "[embedcache.open_store, embedcache.load_manifest, embedcache.read_image]"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert set(dir(probes)) >= set(probes.__all__)
    loaded = _modules_after("import probes\nprobes.SegmentationProbe, probes.run_seg")
    assert "torch" in loaded and not loaded & set(HEAVY) - {"torch"}  # numba: when a fit runs
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        probes.nope  # noqa: B018


# -- a cohort of planted features ---------------------------------------------------------------


def _cohort(folder, *, per_patient: int, n_patients: int = 60, seed: int = 0):
    """``n_patients x per_patient`` images whose global features carry the label plus noise
    shared by a patient's images (near-duplicate films); folds in a ``fold`` column
    (train/val/test by patient, one round) and patient-level folds possible."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    patient = np.repeat([f"P{i:03d}" for i in range(n_patients)], per_patient)
    label = np.repeat(rng.random(n_patients) < 0.5, per_patient).astype(int)
    shared = np.repeat(rng.normal(size=(n_patients, 8)), per_patient, axis=0)
    features = shared + 0.05 * rng.normal(size=(n, 8))
    features[:, 0] += 1.2 * label
    ids = np.array([f"img{i:04d}" for i in range(n)])
    role = np.repeat(np.array(["train", "val", "test"])[np.arange(n_patients) % 3], per_patient)
    store = folder / "s.zarr"
    write_store(store, ids, features)
    manifest = write_manifest(
        folder / "m.csv", ids, patient, finding=label, fold=role, tube=np.roll(label, 1)
    )
    return store, manifest, ids, patient


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return _cohort(tmp_path_factory.mktemp("api"), per_patient=3)


def _linear_argv(store, manifest, out, *extra):
    return [
        "linear",
        str(store),
        "--manifest",
        str(manifest),
        "--label",
        "finding",
        "--n-boot",
        "200",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_run_linear_equals_the_command_and_both_reopen(cohort, tmp_path, capsys):
    store, manifest, ids, _ = cohort
    assert main(_linear_argv(store, manifest, tmp_path / "cli", "--rounds", "1", "3")) == 0
    capsys.readouterr()
    run = probes.run_linear(
        store, manifest, label="finding", rounds=[1, 3], n_boot=200, out=tmp_path / "py"
    )
    from_cli = Run.open(tmp_path / "cli")
    from_py = Run.open(tmp_path / "py")
    assert list(run.results["round"]) == [1, 3]
    for other in (from_cli, from_py):
        pd.testing.assert_frame_equal(other.results, run.results, check_dtype=False)
        pd.testing.assert_frame_equal(
            other.predictions.drop(columns="params"),
            run.predictions.drop(columns="params"),
            check_dtype=False,
        )
        assert other.spec == run.spec and other.task == "classification"
        assert other.info["format"] == RUN_FORMAT
        pd.testing.assert_frame_equal(other.folds, run.folds, check_dtype=False)
    assert run.spec.task.labels == ("finding",) and run.spec.split.rounds == (1, 3)
    assert from_cli.info["command"] is not None and from_py.info["command"] is None


def test_the_command_prints_one_line_errors(cohort, tmp_path, capsys):
    store, manifest, *_ = cohort
    assert main(_linear_argv(store, manifest, tmp_path / "x", "--label", "nope")) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("probes linear: error:") and "'nope'" in err and len(err.splitlines()) == 1
    )


def test_run_open_reads_a_folder_of_the_previous_format(cohort, tmp_path):
    """A folder written before run.json carried a format, a task and a spec: the task comes
    from the prediction columns, as before."""
    store, manifest, *_ = cohort
    run = probes.run_linear(store, manifest, label="finding", rounds=[0], n_boot=50)
    old = tmp_path / "old"
    run.write(old, "csv")
    info = json.loads((old / "run.json").read_text())
    for key in ("format", "task", "spec"):
        info.pop(key)
    (old / "run.json").write_text(json.dumps(info))
    opened = Run.open(old)
    assert opened.spec is None and opened.task == "classification"
    pd.testing.assert_frame_equal(opened.results, run.results, check_dtype=False)
    assert opened.labels == ["finding"]
    # the same folder with only Dice columns is a segmentation run
    predictions = pd.read_csv(old / "predictions.csv").rename(columns={"score": "dice"})
    predictions.drop(columns=["truth", "label"]).to_csv(old / "predictions.csv", index=False)
    assert Run.open(old).task == "segmentation"


def test_run_open_says_why_a_folder_is_not_a_run(cohort, tmp_path):
    store, manifest, *_ = cohort
    with pytest.raises(RunFolderError, match="not a folder"):
        Run.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="no run.json here.*did the run finish"):
        Run.open(tmp_path / "empty")
    run = probes.run_linear(store, manifest, label="finding", rounds=[0], n_boot=20)
    future = tmp_path / "future"
    run.write(future)
    info = json.loads((future / "run.json").read_text())
    (future / "run.json").write_text(json.dumps({**info, "format": RUN_FORMAT + 1}))
    with pytest.raises(RunFolderError, match="newer than this probes"):
        Run.open(future)
    (future / "run.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="unreadable run.json"):
        Run.open(future)


def test_a_rewrite_never_leaves_a_mix_of_two_runs(cohort, tmp_path, monkeypatch):
    """run.json is removed first and written last: a write killed half-way leaves a folder
    that Run.open refuses, never new tables under an old run.json."""
    store, manifest, *_ = cohort
    first = probes.run_linear(store, manifest, label="finding", rounds=[0], n_boot=20)
    first.write(tmp_path / "run")
    second = probes.run_linear(store, manifest, label="finding", rounds=[1], n_boot=20)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("probes.core.run._atomic_table", crash)
    with pytest.raises(OSError):
        second.write(tmp_path / "run")
    with pytest.raises(RunFolderError, match="no run.json"):
        Run.open(tmp_path / "run")


def test_merging_rounds_equals_one_run(cohort, tmp_path):
    store, manifest, *_ = cohort
    whole = probes.run_linear(store, manifest, label="finding", n_boot=50)
    rounds = [
        probes.run_linear(store, manifest, label="finding", rounds=[k], n_boot=50) for k in range(5)
    ]
    merged = Run.merge(rounds[::-1], name="merged")
    pd.testing.assert_frame_equal(merged.results, whole.results, check_dtype=False)
    pd.testing.assert_frame_equal(merged.summary, whole.summary, check_dtype=False)
    pd.testing.assert_frame_equal(
        merged.predictions.sort_values(["round", "split", "image_id"]).reset_index(drop=True),
        whole.predictions.sort_values(["round", "split", "image_id"]).reset_index(drop=True),
    )
    assert merged.spec.split.rounds == (0, 1, 2, 3, 4)
    merged.write(tmp_path / "merged")
    assert Run.open(tmp_path / "merged").info["name"] == "merged"


def test_run_seg_records_the_reference_resolution(tmp_path):
    """``reference=True`` trains and scores at the encoder's input size (the reference study's
    Dice), recorded in run.json; the default says it is lower."""
    from embedcache.store import GroupLayout, open_store

    n, side, channels = 24, 4, 3
    rng = np.random.default_rng(0)
    ids = np.array([f"i{k:02d}" for k in range(n)])
    layout = GroupLayout(n, channels, {16: (side, side, channels), 32: (2, 2, channels)}, "float32")
    store = tmp_path / "s.zarr"
    preprocessing = {"input_size": 32, "resize": "resize"}
    with open_store(store, "a") as s:
        group = s.create_group("enc", layout, ids, {"encoder": {"preprocessing": preprocessing}})
        group.write_rows(
            0,
            {
                "global": rng.normal(size=(n, channels)).astype(np.float32),
                "grid16": rng.normal(size=(n, side, side, channels)).astype(np.float32),
                "grid32": rng.normal(size=(n, 2, 2, channels)).astype(np.float32),
            },
        )
        group.mark_done(np.arange(n))
    masks = []
    for k in range(n):
        mask = np.zeros((40, 40), np.uint8)
        mask[5 : 10 + k, 8:30] = 255
        path = tmp_path / f"m{k}.png"
        from PIL import Image

        Image.fromarray(mask).save(path)
        masks.append(str(path))
    manifest = write_manifest(tmp_path / "m.csv", ids, [f"p{k}" for k in range(n)], mask=masks)
    common = dict(mask="mask", n_boot=20, rounds=[0], probe_params={"max_epochs": 2})
    reference = probes.run_seg(store, manifest, reference=True, **common)
    assert reference.info["mask_size"] == [32, 32]
    assert reference.spec.options["mask_size"] == "input"
    assert reference.spec.params["lr"] == pytest.approx(1e-4)
    default = probes.run_seg(store, manifest, **common)
    assert default.info["mask_size"] == [16, 16]  # 4 x grid16
    assert "mask_size='input'" in default.info["mask_size_rule"]
    assert probes.run_seg(store, manifest, mask_size="input", **common).info["mask_size"] == [
        32,
        32,
    ]


# -- one statistic, one meaning -----------------------------------------------------------------


def _ci_width(run) -> float:
    row = run.results.iloc[0]
    return row["auroc_ci_high"] - row["auroc_ci_low"]


def test_patient_cis_agree_in_results_and_report_and_widen_with_shared_patients(tmp_path):
    """Three near-duplicate images per patient: results.csv and the report give the same
    patient-level CI; the same images as distinct patients give a narrower one."""
    from probes.report.tables import metric_summary

    (tmp_path / "a").mkdir()
    store, manifest, ids, patient = _cohort(tmp_path / "a", per_patient=3)
    kwargs = dict(label="finding", folds="fold", n_boot=1000, seed=5656)
    clustered = probes.run_linear(store, manifest, out=tmp_path / "clustered", **kwargs)
    table = metric_summary([Run.open(tmp_path / "clustered")], n_boot=1000, seed=5656)
    auroc = table[table["column"] == "auroc"].iloc[0]
    row = clustered.results.iloc[0]
    assert (auroc["ci_low"], auroc["ci_high"]) == pytest.approx(
        (row["auroc_ci_low"], row["auroc_ci_high"]), abs=1e-12
    )
    assert row["ci"].startswith("95% percentile bootstrap over patients")
    files = probes.report([clustered], tmp_path / "report", n_boot=1000, seed=5656)
    assert f"[{row['auroc_ci_low']:.3f}, {row['auroc_ci_high']:.3f}]" in files.markdown.read_text()

    distinct = tmp_path / "distinct.csv"
    table = pd.read_csv(manifest)
    table["patient_id"] = [f"Q{i:04d}" for i in range(len(table))]
    table.to_csv(distinct, index=False)
    separate = probes.run_linear(store, distinct, **kwargs)
    assert separate.results.iloc[0]["auroc"] == pytest.approx(row["auroc"])  # same scores
    assert _ci_width(separate) < 0.8 * _ci_width(clustered)
