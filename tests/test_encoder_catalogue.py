"""`embedcache encoders`: the table's shapes come from the real architectures, built on meta."""

from __future__ import annotations

import pytest
import torch

from embedcache.encoders import build_encoder
from embedcache.encoders._catalogue import summarise


@pytest.mark.parametrize(
    "name, global_dim, grid16, grid32",
    [
        ("rad-dino", 768, (37, 37, 768, 14), (18, 18, 768, 28)),
        ("ark-plus", 1536, (48, 48, 768, 16), (24, 24, 1536, 32)),
        ("medimageinsight", 1024, (30, 30, 1024, 16), (15, 15, 2048, 32)),
    ],
)
def test_catalogue_rows_match_the_reference_table(name, global_dim, grid16, grid32):
    row = summarise(name)
    assert (row.global_dim, row.grids[16], row.grids[32]) == (global_dim, grid16, grid32)


def test_meta_build_counts_the_same_parameters_as_a_real_build():
    row = summarise("dinov2-small")
    real = build_encoder("dinov2-small", "none")
    assert row.parameters_m == pytest.approx(sum(p.numel() for p in real.parameters()) / 1e6)
    assert all(p.device == torch.device("cpu") for p in real.parameters())
