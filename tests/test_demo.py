"""The README's main job: the offline demo runs end to end and leaves a verified store."""

from __future__ import annotations

import pandas as pd

from embedcache.store import open_store
from embedcache.store.verify import verify_group
from probes.demo import run_demo


def test_demo_extracts_verifies_and_probes(tmp_path, capsys):
    store_path = run_demo(tmp_path, n_patients=8, progress=False)
    out = capsys.readouterr().out
    assert "verify    ok" in out and "AUROC" in out and "Dice" in out
    manifest = pd.read_csv(tmp_path / "cohort" / "manifest.csv", dtype=str)
    with open_store(store_path) as store:
        (key,) = store.keys()
        group = store.group(key)
        assert verify_group(group).ok
        assert group.ids.tolist() == manifest.image_id.tolist()
    assert any((tmp_path / "probes" / "linear").iterdir())
    assert any((tmp_path / "probes" / "seg-heart").iterdir())
    # Running it again resumes: nothing is extracted twice.
    run_demo(tmp_path, n_patients=8, progress=False)
    assert "extracted 0 now" in capsys.readouterr().out
