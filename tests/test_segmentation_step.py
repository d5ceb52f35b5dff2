"""The segmentation probe's arithmetic on its own: the interpolation matrices, the two-class
loss, and the hand-fused CPU step with its compiled full-resolution loop, each against torch's
plain operations and autograd (the probe's behaviour is tests/test_probes_segmentation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probes.segmentation.head import _LinearGridHead, interpolation_matrix
from probes.segmentation.probe import SegmentationProbe


def test_bilinear_matrices_equal_interpolate_and_binary_loss_equals_cross_entropy():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    for align in (True, False):
        rows = interpolation_matrix(5, 13, align).double()
        cols = interpolation_matrix(7, 17, align).double()
        ref = F.interpolate(x, size=(13, 17), mode="bilinear", align_corners=align)
        assert torch.allclose(torch.einsum("ih,bkhw,jw->bkij", rows, x, cols), ref, atol=1e-6)
    # The two-class head scores the logit difference; its loss is weighted cross-entropy.
    gen = torch.Generator().manual_seed(0)
    head = _LinearGridHead([(4, 4, 6)], 2, (8, 8), True, gen)
    grids = torch.randn(3, 4, 4, 6)
    labels = np.random.default_rng(0).integers(0, 2, (3, 8, 8))
    probe = SegmentationProbe(class_weights=(1.0, 5.0))
    nll, _, _ = probe._loss_parts(head([grids]), probe._targets(labels))
    weights = torch.tensor([1.0, 5.0])
    w, b = head.effective(0)
    logits = torch.einsum("bhwk->bkhw", grids @ w.T + b + head.bias)
    logits = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True)
    ref = F.cross_entropy(logits, torch.from_numpy(labels), weight=weights, reduction="sum")
    assert nll.item() == pytest.approx(ref.item(), rel=1e-5)


def test_row_pairs_rebuild_the_interpolation_matrices():
    """Every bilinear interpolation matrix is two neighbouring terms a row, exactly; anything
    else is refused."""
    from probes.segmentation.step import row_pairs

    for align in (True, False):
        for n_in, n_out in [(32, 512), (37, 518), (16, 224), (5, 23), (7, 300), (6, 6), (1, 5)]:
            a = interpolation_matrix(n_in, n_out, align)
            lo, hi, weights = row_pairs(a)
            rebuilt = np.zeros(a.shape, np.float32)
            np.add.at(rebuilt, (np.arange(n_out), lo), weights[:, 0])
            np.add.at(rebuilt, (np.arange(n_out), hi), weights[:, 1])
            np.testing.assert_array_equal(rebuilt, a.numpy())
            assert ((hi - lo) <= 1).all() and (lo >= 0).all() and (hi < n_in).all()
    with pytest.raises(ValueError, match="row 0"):
        row_pairs(torch.ones(4, 3))


def test_compiled_exp_equals_numpy():
    """The loss loop's own exp (Cephes expf, for exp(-|d|)) is numpy's float64 exp to a few
    float32 ulp; below -87 it stops at exp(-87) ~ 1.6e-38 instead of going subnormal."""
    from probes.segmentation import kernels

    x = np.concatenate([np.linspace(-100, 0, 4001), [-0.0, -1e-8, -87.0, -88.0]]).astype(np.float32)
    poly, bits = np.empty_like(x), np.empty(len(x), np.int32)
    kernels._exp_parts(x, poly, bits)
    got = poly * bits.view(np.float32)
    normal = x >= -87
    np.testing.assert_allclose(got[normal], np.exp(x[normal].astype(np.float64)), rtol=3e-7)
    np.testing.assert_allclose(got[~normal], np.exp(np.float64(-87.0)), rtol=3e-7)


@pytest.mark.parametrize(
    ("grid_hw", "mask_hw", "align", "dtype", "batch"),
    [
        ((5, 7), (23, 31), True, torch.float16, 5),
        ((8, 8), (32, 32), False, torch.float32, 3),
        ((6, 4), (6, 4), True, torch.float16, 4),  # no upsampling
        ((32, 32), (512, 512), False, torch.float16, 3),  # the input resolution (issue 12)
        ((32, 32), (512, 512), True, torch.float32, 2),
        ((7, 5), (300, 131), False, torch.float32, 3),  # odd sizes: partial bands and runs
        ((1, 3), (4, 9), True, torch.float32, 2),  # one grid row
    ],
)
@pytest.mark.parametrize("weights", [(1.0, 5.0), (2.0, 2.0), (0.5, 1.0)])
def test_fused_cpu_step_equals_autograd_cross_entropy(
    grid_hw, mask_hw, align, dtype, batch, weights
):
    """The hand-fused CPU step (compact uint8 masks, the compiled full-resolution loop) gives
    the loss and parameter gradients of plain class-weighted F.cross_entropy on the two
    upsampled logits, through standardisation."""
    from probes.segmentation.loss import loss_targets
    from probes.segmentation.step import fused_binary_nll, fused_binary_scores, fused_binary_step

    gen = torch.Generator().manual_seed(0)
    channels = 12
    grid = torch.randn(batch, *grid_hw, channels, generator=gen).to(dtype)
    labels = (torch.rand(batch, *mask_hw, generator=gen) > 0.7).to(torch.uint8)

    def head():
        h = _LinearGridHead(
            [(*grid_hw, channels)], 2, mask_hw, align, torch.Generator().manual_seed(1)
        )
        h.mean0.copy_(torch.linspace(-0.5, 0.5, channels))
        h.scale0.copy_(torch.linspace(0.5, 2.0, channels))
        return h

    reference = head()
    d = reference([grid])[:, 0]  # (B, H, W) logit difference
    logits = torch.stack([torch.zeros_like(d), d], 1)
    w = torch.tensor(weights)
    summed = F.cross_entropy(logits, labels.long(), weight=w, reduction="sum")
    loss = summed / w[labels.long()].sum()
    loss.backward()

    fused = head()
    targets = loss_targets(labels.numpy(), 2, weights, compact=True)
    got = fused_binary_step(fused, grid, targets, torch.tensor(weights))
    assert got.item() == pytest.approx(loss.item(), rel=1e-5)
    for a, b in zip(reference.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
    # the loss alone (validation), and the forward alone (prediction), from row views
    nll = fused_binary_nll(head(), list(grid), targets)
    assert nll.item() == pytest.approx(summed.item(), rel=1e-5)
    scores = fused_binary_scores(head(), list(grid))
    torch.testing.assert_close(scores, d[:, None].detach(), rtol=1e-5, atol=1e-5)
