"""Label budgets: nested, stratified, patient-level draws; results per (budget, draw) for the
linear, segmentation, shortcut and control runs; the draw-averaged curve and the paired test at
each budget on the one bootstrap; studies pass budgets to every probe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_probes_features import write_manifest, write_store

import probes
from probes.analysis.budgets import budget_curve, paired_budget_tests
from probes.analysis.paired import paired_auroc_bootstrap
from probes.cli import main
from probes.core.budgets import budget_splits, nested_draw, parse_budgets
from probes.core.run import Run
from probes.core.splits import patient_split


def test_parse_budgets():
    assert parse_budgets("0.01,0.1,1.0") == ((0.01, 0.1, 1.0), "fraction")
    assert parse_budgets("16,1,4") == ((1.0, 4.0, 16.0), "count")
    assert parse_budgets([0.5, 1.0]) == ((0.5, 1.0), "fraction")
    assert parse_budgets([4, 16]) == ((4.0, 16.0), "count")
    assert parse_budgets(None) == (None, "fraction")
    for bad, message in (("0.1,4", "mix"), ("0.0,0.5", r"\(0, 1\]"), ("1.5", r"\(0, 1\]")):
        with pytest.raises(ValueError, match=message):
            parse_budgets(bad)
    with pytest.raises(ValueError, match="whole numbers"):
        parse_budgets("2.5", "count")


def _cohort_arrays(n_patients=90, seed=0):
    """1-3 images per patient, a patient-level label (40% positive)."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, n_patients)
    patients = np.repeat([f"P{i:03d}" for i in range(n_patients)], per)
    label = np.repeat((rng.random(n_patients) < 0.4).astype(int), per)
    return patients, label


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_draws_are_nested_stratified_and_by_patient(draw):
    patients, label = _cohort_arrays()
    split = patient_split(label, patients, n_splits=5, seed=1)
    budgets = (0.1, 0.25, 0.5, 1.0)
    for r in split:
        rng = np.random.default_rng([7, r.index, draw])
        subsets = nested_draw(r.train, label, patients, budgets, "fraction", rng)
        train_patients = {c: set(patients[r.train][label[r.train] == c]) for c in (0, 1)}
        previous: set[str] = set()
        for budget, rows in zip(budgets, subsets, strict=True):
            assert set(rows) <= set(r.train)  # never a validation or test row
            chosen = set(patients[rows])
            assert previous <= chosen  # nested: a smaller budget lies inside the larger
            previous = chosen
            # whole patients only: every image of a chosen patient is in
            assert set(rows) == set(r.train[np.isin(patients[r.train], list(chosen))])
            for c in (0, 1):  # stratified: each class keeps its share, at least one patient
                have = len(chosen & train_patients[c])
                assert have == max(1, int(np.floor(budget * len(train_patients[c]) + 0.5)))
        assert len(subsets[-1]) == len(r.train)


def test_count_budgets_give_images_per_class_and_draws_differ():
    patients = np.array([f"P{i}" for i in range(60)])  # one image per patient
    label = np.r_[np.zeros(40, int), np.ones(20, int)]
    train = np.arange(60)
    subsets = [
        nested_draw(train, label, patients, (1, 4, 16), "count", np.random.default_rng(d))
        for d in range(2)
    ]
    for subset in subsets:
        assert [np.bincount(label[rows], minlength=2).tolist() for rows in subset] == [
            [1, 1],
            [4, 4],
            [16, 16],
        ]
    assert not np.array_equal(subsets[0][1], subsets[1][1])  # another draw, other patients
    again = nested_draw(train, label, patients, (1, 4, 16), "count", np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(again, subsets[0], strict=True))


def test_budget_splits_keep_validation_and_test_and_fit_the_full_budget_once():
    patients, label = _cohort_arrays()
    split = patient_split(label, patients, n_splits=5, seed=1)
    made = list(budget_splits(split, label, patients, (0.2, 1.0), "fraction", 3, seed=5))
    assert [(b, d) for b, d, _ in made] == [(0.2, 0), (0.2, 1), (0.2, 2), (1.0, 0)]
    for _, _, sub in made:
        for r, full in zip(sub, split, strict=True):
            assert np.array_equal(r.val, full.val) and np.array_equal(r.test, full.test)
    assert all(
        np.array_equal(r.train, full.train) for r, full in zip(made[-1][2], split, strict=True)
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Planted global features, 1-3 images per patient, a confounder column."""
    folder = tmp_path_factory.mktemp("budgets")
    patients, label = _cohort_arrays(n_patients=70, seed=2)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(len(label), 6))
    X[:, 0] += 1.5 * label
    ids = np.array([f"img{i:03d}" for i in range(len(label))])
    write_store(folder / "s.zarr", ids, X)
    tube = (rng.random(len(label)) < 0.3 + 0.4 * label).astype(int)
    write_manifest(folder / "m.csv", ids, patients, finding=label, tube=tube)
    return folder / "s.zarr", folder / "m.csv"


def test_linear_results_per_budget_and_draw_and_the_full_budget_is_the_plain_run(cohort, tmp_path):
    store, manifest = cohort
    common = dict(label="finding", n_boot=50, Cs=[0.1, 1.0])
    run = probes.run_linear(store, manifest, budgets="0.2,1.0", budget_draws=2, **common)
    plain = probes.run_linear(store, manifest, **common)
    results, predictions = run.results, run.predictions
    assert {"budget", "draw", "n_train"} <= set(results.columns)
    assert list(predictions.columns[5:7]) == ["budget", "draw"]
    keys = results[["budget", "draw"]].drop_duplicates().values.tolist()
    assert keys == [[0.2, 0], [0.2, 1], [1.0, 0]]
    assert len(results) == 5 * 3
    small = results[results["budget"] == 0.2]["n_train"].to_numpy()
    full = results[results["budget"] == 1.0]["n_train"].to_numpy()
    assert (small < 0.35 * full.mean()).all()
    # the largest budget's draw 0 is the run without budgets, row for row
    at_full = predictions[predictions["budget"] == 1.0].drop(columns=["budget", "draw", "n_train"])
    pd.testing.assert_frame_equal(
        at_full.reset_index(drop=True), plain.predictions, check_dtype=False
    )
    # validation and test rows are the same images at every budget and draw
    for _, part in predictions.groupby(["budget", "draw"]):
        rows = part[["image_id", "round", "split"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, plain.predictions[["image_id", "round", "split"]])
    assert set(run.summary["budget"]) == {0.2, 1.0}
    assert run.spec.split.budgets == (0.2, 1.0) and run.spec.split.budget_draws == 2
    # one round alone (a study's unit) draws the same patients as in the whole run
    unit = probes.run_linear(
        store, manifest, budgets="0.2,1.0", budget_draws=2, rounds=[3], **common
    )
    whole = predictions[predictions["round"] == 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(unit.predictions, whole, check_dtype=False)
    # the command line gives the same, and the folder reopens with its spec
    argv = ["linear", str(store), "--manifest", str(manifest), "--label", "finding"]
    argv += ["--n-boot", "50", "--Cs", "0.1", "1.0", "--budgets", "0.2,1.0"]
    assert main([*argv, "--budget-draws", "2", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    again = Run.open(tmp_path / "cli")
    assert again.spec == run.spec
    pd.testing.assert_frame_equal(again.results, run.results, check_dtype=False)


def test_shortcut_and_control_runs_take_budgets(cohort):
    store, manifest = cohort
    common = dict(n_boot=20, Cs=[1.0], budgets=[0.5, 1.0], rounds=[0, 1])
    shortcut = probes.run_shortcut(store, manifest, confounder="tube", label="finding", **common)
    assert set(shortcut.results["label"]) == {"tube", "finding", "finding:balanced"}
    assert set(shortcut.results["budget"]) == {0.5, 1.0}
    assert shortcut.extras["shortcut.json"]["confounder_probe"]["n"] == len(
        shortcut.predictions.query("split == 'test' and label == 'tube' and budget == 1.0")
    )
    floor = probes.run_control(store, manifest, kind="shuffled-label", label="finding", **common)
    assert set(floor.results["budget"]) == {0.5, 1.0}


def test_curve_and_paired_tests_at_each_budget_use_the_one_bootstrap(cohort):
    store, manifest = cohort
    common = dict(label="finding", n_boot=20, budgets="0.3,1.0", budget_draws=2)
    a = probes.run_linear(store, manifest, Cs=[1.0], **common)
    b = probes.run_linear(store, manifest, Cs=[1e-3], **common)
    curve = budget_curve(a.predictions, n_boot=200, seed=4)
    assert curve["budget"].tolist() == [0.3, 1.0] and curve["draws"].tolist() == [2, 1]
    test = a.predictions[a.predictions["split"] == "test"]
    for row in curve.itertuples():
        per_draw = [
            probes.core.metrics.auroc(part["truth"], part["score"])
            for _, part in test[test["budget"] == row.budget].groupby("draw")
        ]
        assert row.estimate == pytest.approx(np.mean(per_draw))
        assert row.ci_low <= row.estimate <= row.ci_high
    paired = paired_budget_tests(a.predictions, b.predictions, n_boot=300, seed=9)
    assert paired["budget"].tolist() == [0.3, 1.0]
    # one draw: exactly the paired AUROC bootstrap over patients
    full = paired[paired["budget"] == 1.0].iloc[0]
    ta = test[test["budget"] == 1.0].sort_values(["round", "image_id"])
    tb = b.predictions.query("split == 'test' and budget == 1.0").sort_values(["round", "image_id"])
    reference = paired_auroc_bootstrap(
        ta["truth"], ta["score"], tb["score"], groups=ta["patient_id"], n_boot=300, seed=9
    )
    assert full["difference"] == pytest.approx(reference.difference)
    assert full["ci_low"] == pytest.approx(reference.ci_low)
    assert full["ci_high"] == pytest.approx(reference.ci_high)
    assert full["pvalue"] == pytest.approx(reference.pvalue)


def test_segmentation_results_per_budget_and_draw(tmp_path):
    from embedcache.store import GroupLayout, open_store

    n, side, channels = 24, 4, 3
    rng = np.random.default_rng(0)
    ids = np.array([f"i{k:02d}" for k in range(n)])
    layout = GroupLayout(n, channels, {16: (side, side, channels), 32: (2, 2, channels)}, "float32")
    store = tmp_path / "s.zarr"
    with open_store(store, "a") as s:
        group = s.create_group("enc", layout, ids, {"encoder": {}})
        group.write_rows(
            0,
            {
                "global": rng.normal(size=(n, channels)).astype(np.float32),
                "grid16": rng.normal(size=(n, side, side, channels)).astype(np.float32),
                "grid32": rng.normal(size=(n, 2, 2, channels)).astype(np.float32),
            },
        )
        group.mark_done(np.arange(n))
    paths = []
    for k in range(n):
        mask = np.zeros((16, 16), np.uint8)
        if k % 3:  # a third of the masks empty: the draws are stratified on it
            mask[2 : 4 + k % 8, 3:12] = 255
        paths.append(str(tmp_path / f"m{k}.png"))
        Image.fromarray(mask).save(paths[-1])
    manifest = write_manifest(tmp_path / "m.csv", ids, [f"p{k}" for k in range(n)], mask=paths)
    run = probes.run_seg(
        store,
        manifest,
        mask="mask",
        n_boot=20,
        rounds=[0],
        probe_params={"max_epochs": 2},
        budgets="0.5,1.0",
        budget_draws=2,
    )
    assert run.results[["budget", "draw"]].values.tolist() == [[0.5, 0], [0.5, 1], [1.0, 0]]
    assert (run.results["n_train"].iloc[:2] < run.results["n_train"].iloc[2]).all()
    assert set(run.summary["budget"]) == {0.5, 1.0}
    curve = budget_curve(run.predictions, n_boot=50)
    assert curve["metric"].tolist() == ["dice", "dice"]


def test_study_budgets_reach_every_probe_but_not_the_finetune(tmp_path):
    from probes.study import load_study, plan_units
    from probes.study.units import unit_args, unit_argv

    study_file = tmp_path / "study.toml"
    study_file.write_text(
        """
[study]
name = "b"
budgets = [0.25, 1.0]
budget_draws = 3
[cohorts.c]
manifest = "m.csv"
store = "s.zarr"
[encoders.e]
spec = "dinov2-small"
[protocols.logistic]
command = "linear"
[protocols.floor]
command = "control"
options = { kind = "shuffled-label" }
[protocols.ft]
command = "finetune"
[tasks.t]
cohort = "c"
label = "y"
protocols = ["logistic", "floor", "ft"]
"""
    )
    study = load_study(study_file)
    where = dict(manifest=tmp_path / "m.csv", root=None, store_key="k", out=tmp_path)
    for unit in plan_units(study)[:: study.n_folds]:
        args = unit_args(study, unit, **where)
        argv = unit_argv(study, unit, **where)
        if unit.protocol == "ft":
            assert not hasattr(args, "budgets") and "--budgets" not in argv
        else:
            assert args.budgets == "0.25,1.0" and args.budget_draws == 3
            assert argv[argv.index("--budgets") + 1] == "0.25,1.0"
    study_file.write_text(study_file.read_text().replace("[0.25, 1.0]", '"0.5,4"'))
    with pytest.raises(probes.study.StudyError, match="mix"):
        load_study(study_file)
