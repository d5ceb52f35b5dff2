"""Splits: patient-level folds, the reference rotation, user fold columns, leakage checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from probes.core.splits import (
    LeakageError,
    Split,
    check_no_leakage,
    column_split,
    patient_folds,
    patient_split,
    reference_folds,
    reference_rotation,
)


def _cohort(n_patients=60, seed=0):
    """Patients with 1-4 images each; a patient-level label with prevalence ~0.3."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, n_patients)
    patients = np.repeat([f"P{i:03d}" for i in range(n_patients)], counts)
    sick = rng.random(n_patients) < 0.3
    return np.repeat(sick, counts).astype(int), patients


def test_patient_folds_never_split_a_patient_and_keep_prevalence():
    labels, patients = _cohort()
    folds = patient_folds(labels, patients, n_splits=5, seed=1)
    assert set(folds.tolist()) == set(range(5))
    per_patient = pd.Series(folds).groupby(patients).nunique()
    assert (per_patient == 1).all()
    prevalence = pd.Series(labels).groupby(folds).mean()
    assert np.all(np.abs(prevalence - labels.mean()) < 0.1)


def test_patient_folds_are_seeded():
    labels, patients = _cohort()
    a = patient_folds(labels, patients, seed=7)
    np.testing.assert_array_equal(a, patient_folds(labels, patients, seed=7))
    assert not np.array_equal(a, patient_folds(labels, patients, seed=8))


def test_patient_folds_stratify_several_label_columns():
    labels, patients = _cohort()
    other = np.roll(labels, 3)
    folds = patient_folds(np.column_stack([labels, other]), patients)
    assert (pd.Series(folds).groupby(patients).nunique() == 1).all()


def test_too_few_patients_is_an_error():
    with pytest.raises(ValueError, match="3 patients cannot fill 5"):
        patient_folds([0, 1, 0, 1], ["a", "b", "c", "c"])


def test_patient_split_rotation_has_no_leakage():
    labels, patients = _cohort()
    split = patient_split(labels, patients)
    check_no_leakage(split, patients)
    assert len(split) == 5 and split.kind == "patient"
    for r in split:
        assert np.all(split.folds[r.test] == r.index)
        assert np.all(split.folds[r.val] == (r.index + 1) % 5)
        together = np.sort(np.concatenate([r.train, r.val, r.test]))
        np.testing.assert_array_equal(together, np.arange(len(labels)))


def test_reference_folds_reproduce_the_notebook():
    """The study's notebook: df.sample(frac=1, random_state=5656), 5 contiguous folds with
    the first n % 5 one row longer, fold k test and fold k+1 validation. Its printed sizes
    for n = 4758 were Train/Valid/Test 2854/952/952, 2854/952/952, 2855/951/952,
    2856/951/951 and 2855/952/951."""
    n = 4758
    table = pd.DataFrame({"row": np.arange(n)}).sample(frac=1, random_state=5656)
    per_fold = n // 5
    sizes = [per_fold + (1 if k < n % 5 else 0) for k in range(5)]
    notebook = np.empty(n, dtype=int)
    notebook[table["row"].to_numpy()] = np.repeat(np.arange(5), sizes)
    np.testing.assert_array_equal(reference_folds(n), notebook)

    split = reference_rotation(n)
    sizes = [(len(r.train), len(r.val), len(r.test)) for r in split]
    assert sizes == [
        (2854, 952, 952),
        (2854, 952, 952),
        (2855, 951, 952),
        (2856, 951, 951),
        (2855, 952, 951),
    ]


def test_reference_rotation_is_60_20_20_and_seeded():
    split = reference_rotation(1000)
    for r in split:
        assert (len(r.train), len(r.val), len(r.test)) == (600, 200, 200)
        assert not set(r.train) & set(r.val) and not set(r.val) & set(r.test)
    again = reference_rotation(1000)
    np.testing.assert_array_equal(split.folds, again.folds)
    assert not np.array_equal(split.folds, reference_rotation(1000, seed=1).folds)
    assert split.seed == 5656 and split.kind == "reference"


def test_leaked_patient_is_named():
    patients = np.array(["A", "A", "B", "C", "D", "E", "F", "G", "H", "I"])
    folds = np.array([0, 1, 1, 2, 2, 3, 3, 4, 4, 0])  # patient A in folds 0 and 1
    split = Split.rotation(folds, "column:fold")
    with pytest.raises(LeakageError, match=r"round 0 .* in both val and test: 'A'"):
        check_no_leakage(split, patients)


def test_leakage_across_train_and_test_names_both_sets():
    patients = np.array(["A", "B", "C", "D", "E", "A"])
    folds = np.array([0, 1, 2, 3, 4, 2])  # A in fold 0 and fold 2
    with pytest.raises(LeakageError, match=r"round 0.*train and test: 'A'"):
        check_no_leakage(Split.rotation(folds, "column:fold"), patients)


def test_reference_rotation_leaks_on_multi_image_patients():
    labels, patients = _cohort()
    with pytest.raises(LeakageError, match="patient leakage"):
        check_no_leakage(reference_rotation(len(labels)), patients)


def test_column_split_from_fold_ids_and_from_split_words():
    split = column_split(["b", "a", "c", "a", "b", "c"], "site")
    assert split.kind == "column:site" and len(split) == 3
    np.testing.assert_array_equal(split.folds, [1, 0, 2, 0, 1, 2])
    words = column_split(["Train", "Valid", "Test", "train", "test"], "Split")
    (only,) = words.rounds
    assert (
        only.train.tolist() == [0, 3] and only.val.tolist() == [1] and only.test.tolist() == [2, 4]
    )
    with pytest.raises(ValueError, match="2 distinct"):
        column_split([0, 1, 0, 1], "fold")


def test_assignments_table():
    split = reference_rotation(10)
    table = split.assignments()
    assert list(table.columns) == ["fold"] + [f"round_{k}" for k in range(5)]
    for r in split:
        assert (table.loc[r.test, f"round_{r.index}"] == "test").all()
        assert (table.loc[r.val, f"round_{r.index}"] == "val").all()


def test_only_keeps_the_named_rounds_and_the_fold_assignment():
    split = reference_rotation(50, 5, seed=1)
    part = split.only([3, 1])
    assert [r.index for r in part] == [1, 3]
    np.testing.assert_array_equal(part.folds, split.folds)
    for r in part:
        np.testing.assert_array_equal(r.test, split[r.index].test)
        np.testing.assert_array_equal(r.val, split[r.index].val)
    with pytest.raises(ValueError, match=r"round\(s\) \[7\]"):
        split.only([7])


def test_holdout_keeps_patients_whole_and_is_seeded():
    from probes.core.splits import holdout

    groups = np.repeat(np.arange(20), 3)
    train, val = holdout(60, 0.2, groups, np.random.default_rng(0))
    assert not set(groups[train]) & set(groups[val]) and len(val) == 12  # 4 of 20 patients
    again = holdout(60, 0.2, groups, np.random.default_rng(0))
    np.testing.assert_array_equal(again[1], val)
    with pytest.raises(ValueError, match="validation_fraction"):
        holdout(60, 1.0, None, np.random.default_rng(0))
