"""Readers of a store while an extraction writes it: ``embedcache info`` says how many rows are
done, ``FeatureSet`` / ``probes`` see only done rows and refuse the group unless asked
(``--allow-partial``), and the extraction goes on to the same store as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedcache.cli import main as embedcache_main
from embedcache.extract import extract
from embedcache.intake import load_manifest
from embedcache.store import open_store
from embedcache.store.layout import FEATURE_ARRAYS
from probes.cli import main as probes_main
from probes.core.features import FeatureError, FeatureSet

CHILD = Path(__file__).with_name("kill_child.py")
SHARDS_BEFORE_STOP = 3  # of 4 rows each


def _contents(path):
    with open_store(path) as store:
        (key,) = store.keys()
        group = store.group(key)
        arrays = {name: np.asarray(group.array(name)[:]) for name in FEATURE_ARRAYS}
        arrays["done"], arrays["ids"] = group.done, group.ids
        return arrays


@pytest.fixture(scope="module")
def reference(phantom_manifest, tiny_encoder_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("readers-ref") / "s.zarr"
    extract(
        phantom_manifest,
        tiny_encoder_spec,
        out,
        rows_per_shard=4,
        batch_size=3,
        num_workers=1,
        progress=False,
        log=lambda *_: None,
    )
    return _contents(out)


def _wait_until_stopped(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid and os.WIFSTOPPED(status):
            return
        if pid:  # it ended instead
            proc.returncode = os.waitstatus_to_exitcode(status)
            pytest.fail(f"the extraction ended ({proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the extraction never reached its stop point")


def test_readers_during_an_extraction_see_only_done_rows(
    phantom_manifest, tiny_encoder_spec, reference, tmp_path, capsys
):
    store, log = tmp_path / "s.zarr", tmp_path / "child.log"
    with log.open("w") as err:
        child = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                str(phantom_manifest),
                tiny_encoder_spec,
                str(store),
                f"stop:{SHARDS_BEFORE_STOP}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        _wait_until_stopped(child, log)
        n_done, n = 4 * SHARDS_BEFORE_STOP, len(reference["ids"])

        # info: how many rows are done, and that the group is being written
        assert embedcache_main(["info", str(store), "--json"]) == 0
        (group,) = json.loads(capsys.readouterr().out)["groups"]
        assert (group["done"], group["rows"], group["state"]) == (n_done, n, "writing")
        assert group["writing"]["pid"] == child.pid
        assert embedcache_main(["info", str(store)]) == 0
        text = capsys.readouterr().out
        assert f"rows {n_done}/{n} done" in text and "writing: an extraction" in text

        # FeatureSet: refused with the done count, or (allow_partial) the done rows only
        with pytest.raises(FeatureError, match=rf"{n_done} of {n} rows done.*--allow-partial"):
            FeatureSet.open(store, phantom_manifest)
        partial = FeatureSet.open(store, phantom_manifest, allow_partial=True)
        ids = load_manifest(phantom_manifest, check_files=False).image_ids
        assert partial.ids.tolist() == ids[:n_done]
        assert partial.excluded == n - n_done
        np.testing.assert_array_equal(partial.load(), reference["global"][:n_done])

        # the probes command line: refused without --allow-partial, naming the done count
        args = ["linear", str(store), "--manifest", str(phantom_manifest)]
        args += ["--label", "pneumothorax", "--n-folds", "3", "--n-boot", "10", "--quiet"]
        assert probes_main([*args, "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        assert f"{n_done} of {n} rows done" in err and "--allow-partial" in err
        out = tmp_path / "partial"
        assert probes_main([*args, "--out", str(out), "--allow-partial"]) == 0
        assert f"{n_done} images ({n - n_done} excluded)" in capsys.readouterr().out
        run = json.loads((out / "run.json").read_text())
        assert run["rows"] == n_done and len(run["excluded"]) == n - n_done
    finally:
        child.send_signal(signal.SIGCONT)
        assert child.wait(timeout=120) == 0, log.read_text()[-2000:]

    # the extraction went on to the same store as an uninterrupted run
    resumed = _contents(store)
    for name in (*FEATURE_ARRAYS, "done", "ids"):
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    assert embedcache_main(["info", str(store), "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert (group["done"], group["state"], group["writing"]) == (n, "complete", None)
    assert len(FeatureSet.open(store, phantom_manifest)) == n
