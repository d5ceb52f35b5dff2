"""``probes linear`` end to end on a phantom cohort, results tables, plugin discovery."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

from embedcache.extract import extract
from embedcache.intake import load_manifest
from probes import cli
from probes.cli import main
from probes.core.results import cross_predict, read_table, results_table, summary_table
from probes.core.splits import reference_rotation


@pytest.fixture(scope="module")
def phantom_store(tmp_path_factory, phantom_manifest, tiny_encoder_spec):
    out = tmp_path_factory.mktemp("probe-store") / "s.zarr"
    extract(
        phantom_manifest,
        tiny_encoder_spec,
        out,
        rows_per_shard=4,
        batch_size=4,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
    )
    return out


def _linear(store, manifest, out, *extra):
    return main(
        [
            "linear",
            str(store),
            "--manifest",
            str(manifest),
            "--label",
            "pneumothorax",
            "--label",
            "cardiomegaly",
            "--out",
            str(out),
            "--n-boot",
            "50",
            "--quiet",
            *extra,
        ]
    )


def test_linear_end_to_end_lines_up_with_the_manifest(
    phantom_store, phantom_manifest, tmp_path, capsys
):
    assert _linear(phantom_store, phantom_manifest, tmp_path / "out") == 0
    screen = capsys.readouterr().out
    assert "AUROC median [min, max]" in screen and "AUROC mean ± sd" in screen
    assert "pneumothorax" in screen and "cardiomegaly" in screen

    manifest = load_manifest(phantom_manifest).table
    predictions = read_table(tmp_path / "out" / "predictions.parquet")
    for label in ("pneumothorax", "cardiomegaly"):
        test = predictions[(predictions["label"] == label) & (predictions["split"] == "test")]
        assert sorted(test["image_id"]) == sorted(manifest["image_id"])  # every image once
        joined = test.merge(manifest, on="image_id", suffixes=("", "_manifest"))
        assert len(joined) == len(manifest)
        assert (joined["patient_id"] == joined["patient_id_manifest"]).all()
        truth = joined[label].astype(str).str.lower().isin(["1", "true"]).astype(int)
        assert (joined["truth"] == truth).all()
        assert joined["score"].between(0, 1).all()
    assert set(predictions["encoder"]) == {
        json.loads((tmp_path / "out" / "run.json").read_text())["encoder"]
    }
    assert set(predictions["feature"]) == {"global"} and set(predictions["seed"]) == {5656}
    assert json.loads(predictions["params"].iloc[0])["backend"] == "auto"

    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(results) == 2 * 5 and {"auroc", "auprc", "auroc_ci_low", "C"} <= set(results.columns)
    folds = pd.read_csv(tmp_path / "out" / "folds.csv", dtype={"image_id": str})
    assert folds["image_id"].tolist() == manifest["image_id"].tolist()
    # patient folds: a patient's images share one fold
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["split"]["kind"] == "patient" and run["backend"] == "numpy"
    assert {"torch", "numpy", "scikit-learn"} <= set(run["versions"]) and run["command"]


def test_seeded_runs_write_identical_prediction_files(phantom_store, phantom_manifest, tmp_path):
    for name in ("a", "b"):
        assert _linear(phantom_store, phantom_manifest, tmp_path / name, "--format", "csv") == 0
    for table in ("predictions.csv", "results.csv", "folds.csv"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes()
    assert _linear(phantom_store, phantom_manifest, tmp_path / "c") == 0
    assert _linear(phantom_store, phantom_manifest, tmp_path / "d") == 0
    first = (tmp_path / "c" / "predictions.parquet").read_bytes()
    assert first == (tmp_path / "d" / "predictions.parquet").read_bytes()


def test_reference_folds_on_a_multi_image_cohort_fail_on_leakage(
    phantom_store, phantom_manifest, tmp_path, capsys
):
    assert _linear(phantom_store, phantom_manifest, tmp_path / "o", "--folds", "reference") == 2
    err = capsys.readouterr().err
    assert "patient leakage" in err and "'P0" in err
    code = _linear(
        phantom_store, phantom_manifest, tmp_path / "o", "--folds", "reference", "--allow-leakage"
    )
    assert code == 0


def test_fold_column_and_sgd_head(phantom_store, phantom_manifest, tmp_path):
    table = load_manifest(phantom_manifest).table
    patients = sorted(set(table["patient_id"]))
    table["site"] = table["patient_id"].map({p: f"s{i % 3}" for i, p in enumerate(patients)})
    table["path"] = [str(p) for p in table["path"]]
    manifest = tmp_path / "m.csv"
    table.to_csv(manifest, index=False)
    out = tmp_path / "o"
    assert _linear(phantom_store, manifest, out, "--folds", "site", "--mode", "sgd-head") == 0
    predictions = read_table(out / "predictions.parquet")
    assert set(predictions["round"]) == {0, 1, 2} and set(predictions["probe"]) == {"SGDHeadProbe"}


def test_clear_errors(phantom_store, phantom_manifest, tmp_path, capsys):
    code = main(
        [
            "linear",
            str(phantom_store),
            "--manifest",
            str(phantom_manifest),
            "--label",
            "nope",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no label column 'nope'" in err and "'pneumothorax'" in err
    code = main(
        [
            "linear",
            str(phantom_store),
            "--manifest",
            str(phantom_manifest),
            "--label",
            "pneumothorax",
            "--folds",
            "site",
            "--out",
            str(tmp_path),
        ]
    )
    assert (
        code == 2
        and "neither 'patient', 'reference' nor a manifest column" in capsys.readouterr().err
    )


def test_results_tables_from_predictions():
    rng = np.random.default_rng(0)
    n = 200
    X = rng.standard_normal((n, 6))
    y = (X[:, 0] + rng.standard_normal(n) > 0).astype(int)
    from probes.linear.probe import LinearProbe

    split = reference_rotation(n)
    ids = [f"i{k}" for k in range(n)]
    predictions = cross_predict(
        LinearProbe(Cs=[0.01, 1.0]),
        X,
        y,
        split,
        ids=ids,
        patient_ids=ids,
        label_names=["y"],
        seed=1,
    )
    assert (predictions[predictions["split"] == "test"].groupby("image_id").size() == 1).all()
    results = results_table(predictions, n_boot=100, seed=1)
    assert len(results) == 5 and (results["auroc_ci_low"] <= results["auroc"]).all()
    summary = summary_table(results)
    assert summary.loc[0, "auroc_median"] == pytest.approx(np.median(results["auroc"]))
    assert summary.loc[0, "auroc_sd"] == pytest.approx(np.std(results["auroc"], ddof=1))


def test_a_command_loads_only_its_own_module(monkeypatch, capsys):
    """The command table maps a name to a module; only the command that runs is imported
    (``probes linear`` never imports the seg, finetune or report parsers)."""
    module = types.ModuleType("probes.fake_seg_cli")

    def register(subparsers):
        p = subparsers.add_parser("seg", help="segmentation probe")
        p.set_defaults(func=lambda args: print("seg ran") or 0)

    module.register = register
    monkeypatch.setitem(sys.modules, "probes.fake_seg_cli", module)
    monkeypatch.setitem(cli.COMMANDS, "seg", "probes.fake_seg_cli")
    assert main(["seg"]) == 0 and "seg ran" in capsys.readouterr().out
    code = (
        "import sys\n"
        "from probes.cli import build_parser\n"
        "build_parser('linear')\n"
        "print(sorted(m for m in sys.modules if m.startswith('probes.cli.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['probes.cli.common', 'probes.cli.linear']"


def test_a_broken_command_module_fails_loudly(monkeypatch):
    """No stub commands: a command whose module cannot load raises, with its traceback."""
    module = types.ModuleType("probes.broken_cli")
    module.register = lambda subparsers: 1 / 0
    monkeypatch.setitem(sys.modules, "probes.broken_cli", module)
    monkeypatch.setitem(cli.COMMANDS, "seg", "probes.broken_cli")
    with pytest.raises(ZeroDivisionError):
        main(["seg"])
    with pytest.raises(SystemExit):
        main(["linear", "--help"])
