"""The attentive probe: its hand-written step equals autograd, a label in 2 of 256 tokens is
found (and where), the command equals the function, runs merge with their maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from planted import planted_tokens

import probes
from probes.attentive.pool import AttentionPool
from probes.attentive.step import batch_outputs, batch_step
from probes.cli import main
from probes.core.patchmaps import PATCH_MAPS, maps_array
from probes.core.run import Run


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return planted_tokens(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def attentive_run(tokens):
    store, manifest, _ = tokens
    return probes.run_attentive(
        store,
        manifest,
        label="finding",
        rounds=[0],
        n_boot=100,
        grounding_mask="lesion",
        image_size="64x64",
    )


@pytest.mark.parametrize("as_views", [True, False])
@pytest.mark.parametrize("compiled", [True, False])
def test_the_step_and_the_maps_equal_autograd(as_views, compiled, monkeypatch):
    """The step (the compiled CPU loop, and the torch operations CUDA takes, here on the CPU)
    gives autograd's loss and gradients; the maps are the textbook model's."""
    import probes.attentive.step as step_module

    monkeypatch.setattr(step_module, "_compiled", lambda device: compiled)
    pool = AttentionPool(8, 3, torch.Generator().manual_seed(0))
    pool.mean.copy_(torch.randn(8, generator=torch.Generator().manual_seed(1)))
    pool.scale.copy_(torch.rand(8, generator=torch.Generator().manual_seed(2)) + 0.5)
    grids = torch.randn(5, 4, 3, 8, generator=torch.Generator().manual_seed(3)).half()
    y = torch.tensor([0, 1, 1, 0, 1.0])
    loss = batch_step(pool, list(grids) if as_views else grids, y)
    fused = [p.grad.clone() for p in pool.parameters()]
    pool.zero_grad()
    # the textbook model: standardise, attend, pool, classify
    x = (grids.float().reshape(5, 12, 8) - pool.mean) * pool.scale
    attention = torch.softmax(torch.einsum("bpc,qc->bqp", x, pool.queries), dim=2)
    pooled = torch.einsum("bqp,bpc->bqc", attention, x)
    logits = (pooled * pool.weight).sum((1, 2)) + pool.bias
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    reference.backward()
    assert float(loss) == pytest.approx(float(reference.detach()), abs=1e-6)
    for mine, theirs in zip(fused, (p.grad for p in pool.parameters()), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
    z, a, c = batch_outputs(pool, grids)
    torch.testing.assert_close(z, logits.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, attention.mean(1).detach(), atol=1e-6, rtol=1e-5)
    # each patch's contribution: they add up to the logit less the bias
    torch.testing.assert_close(c.sum(1), (logits - pool.bias).detach(), atol=1e-5, rtol=1e-5)


def test_a_label_in_two_of_256_tokens_is_found_by_attention_not_by_the_mean(tokens, attentive_run):
    store, manifest, _ = tokens
    test = attentive_run.results.iloc[0]
    assert test["auroc"] > 0.9, test["auroc"]
    mean = probes.run_linear(store, manifest, label="finding", rounds=[0], n_boot=20)
    assert mean.spec.inputs.feature == "global"  # the global vector is the mean of the tokens
    assert mean.results.iloc[0]["auroc"] < 0.7
    # same folds, same rows, same columns: the report and paired tests treat both alike
    pd.testing.assert_frame_equal(attentive_run.folds, mean.folds)
    assert list(attentive_run.predictions.columns) == list(mean.predictions.columns)
    assert attentive_run.predictions["C"].isna().all()
    pd.testing.assert_frame_equal(
        attentive_run.predictions[["image_id", "round", "split", "truth"]],
        mean.predictions[["image_id", "round", "split", "truth"]],
    )


def test_its_maps_point_at_the_planted_tokens(attentive_run):
    maps = attentive_run.extras[PATCH_MAPS]
    test_ids = set(attentive_run.test["image_id"])
    assert set(maps["map"]) == {"attention", "score"}
    assert set(maps["image_id"]) == test_ids and len(maps) == 2 * len(test_ids)
    attention = maps_array(maps[maps["map"] == "attention"])
    assert attention.shape == (len(test_ids), 16, 16)
    np.testing.assert_allclose(attention.sum((1, 2)), 1.0, rtol=1e-5)
    grounding = attentive_run.extras["grounding.csv"]
    positives = attentive_run.test.query("truth == 1")["image_id"]
    assert set(grounding["image_id"]) == set(positives)  # images with a mask only
    rates = grounding.groupby("map")[["pointing_hit", "patch_auroc"]].mean()
    assert (rates["pointing_hit"] > 0.8).all() and (rates["patch_auroc"] > 0.9).all(), rates
    assert attentive_run.info["grounding_mask"] == "lesion"


def test_the_command_equals_the_function_and_the_folder_reopens(tokens, tmp_path, capsys):
    store, manifest, _ = tokens
    common = dict(label="finding", rounds=[2], n_boot=20, probe_params={"max_epochs": 3})
    run = probes.run_attentive(store, manifest, out=tmp_path / "py", **common)
    argv = ["attentive", str(store), "--manifest", str(manifest), "--label", "finding"]
    argv += ["--rounds", "2", "--n-boot", "20", "--epochs", "3", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    assert "AUROC" in capsys.readouterr().out
    for folder in ("py", "cli"):
        again = Run.open(tmp_path / folder)
        pd.testing.assert_frame_equal(again.results, run.results, check_dtype=False)
        assert again.spec == run.spec and again.task == "classification"
        maps = again.extras[PATCH_MAPS]
        np.testing.assert_array_equal(maps_array(maps), maps_array(run.extras[PATCH_MAPS]))


def test_rounds_merge_with_their_maps_and_fits_are_repeatable(tokens):
    store, manifest, _ = tokens
    common = dict(label="finding", n_boot=10, probe_params={"max_epochs": 2})
    one = probes.run_attentive(store, manifest, rounds=[1], **common)
    two = probes.run_attentive(store, manifest, rounds=[3], **common)
    merged = Run.merge([one, two], name="m")
    assert sorted(merged.extras[PATCH_MAPS]["round"].unique()) == [1, 3]
    assert len(merged.extras[PATCH_MAPS]) == len(one.extras[PATCH_MAPS]) * 2
    again = probes.run_attentive(store, manifest, rounds=[1], **common)  # seeded: same bits
    pd.testing.assert_frame_equal(again.predictions, one.predictions)


def test_the_estimator_streams_from_a_featureset_or_takes_arrays(tokens):
    store, manifest, label = tokens
    fs = probes.FeatureSet.open(store, manifest, feature="grid16")
    train, test = np.arange(0, 300), np.arange(300, 400)
    probe = probes.AttentiveProbe(max_epochs=2, batch_size=32, seed=1)
    from probes.core.grids import StoreGrids

    grids = StoreGrids(fs.group, fs.rows, ["grid16"])
    streamed = probe.fit(grids.subset(train), label[train]).predict_proba(grids.subset(test))
    arrays = fs.load()
    in_memory = probe.fit(arrays[train], label[train]).predict_proba(arrays[test])
    np.testing.assert_array_equal(streamed, in_memory)
    assert streamed.shape == (100, 2) and probe.n_epochs_ == 2
    with pytest.raises(ValueError, match="one grid"):
        probes.AttentiveProbe(grid="16+32").fit(arrays[:10], label[:10])


def test_label_budgets_refit_per_budget_and_draw_with_maps_of_the_largest(tokens):
    """Budgets: the rows per (budget, draw), fewer training images at the smaller budget, the
    draws nested and shared with the linear probe (paired at each budget), patch maps from the
    largest budget's first draw only."""
    store, manifest, _ = tokens
    common = dict(label="finding", rounds=[0], n_boot=10, budgets="0.25,1.0", budget_draws=2)
    run = probes.run_attentive(store, manifest, probe_params={"max_epochs": 2}, **common)
    test = run.predictions[run.predictions["split"] == "test"]
    assert sorted(map(tuple, test[["budget", "draw"]].drop_duplicates().values)) == [
        (0.25, 0),
        (0.25, 1),
        (1.0, 0),
    ]
    n_train = test.groupby("budget")["n_train"].first()
    assert n_train[0.25] < n_train[1.0] / 2
    assert {"budget", "draw", "n_train"} <= set(run.results.columns)
    assert len(run.results) == 3  # one label, one round, three fits
    maps = run.extras[PATCH_MAPS]
    assert len(maps) == 2 * len(test[test["budget"] == 1.0])  # score and attention maps
    linear = probes.run_linear(store, manifest, feature="grid16", **common)
    linear_test = linear.predictions[linear.predictions["split"] == "test"]
    pd.testing.assert_series_equal(
        test.groupby(["budget", "draw"])["n_train"].first(),
        linear_test.groupby(["budget", "draw"])["n_train"].first(),
    )
