"""Distributed extraction: torchrun ranks writing disjoint shards of one store (gloo, CPU).

The stores of two ranks, of a killed rank resumed by one process, and of one process must be
the same bit for bit. Every torchrun here is a real ``torch.distributed.run`` (torchrun's
module) of ``python -m embedcache extract`` on a tiny phantom cohort.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embedcache.extract import extract
from embedcache.extract.distributed import (
    DistributedSetupError,
    RankInfo,
    assign_shards,
    rank_device,
    rank_from_env,
    rank_rows,
)
from embedcache.store import open_store

ROWS_PER_SHARD, BATCH = 16, 5
ARRAYS = ("ids", "global", "grid16", "grid32", "done", "skipped")
#: Group attributes that legitimately differ between two runs of the same extraction: when it
#: was created, the command line (it names the --out store), and this run's record (end time,
#: world size). Everything else must be equal.
RUN_ATTRS = ("created", "command", "extraction")
#: Rows made unreadable: one in rank 0's first shard, one in rank 1's first shard.
BAD_ROWS = (3, 20)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """70 phantom images (5 shards of 16, the last one of 6), two of them corrupt."""
    from embedcache.phantoms import CohortSpec, make_cohort

    manifest = make_cohort(
        tmp_path_factory.mktemp("dist-cohort"),
        CohortSpec(n_patients=35, images_per_patient=(2, 2), size=48),
    )
    paths = pd.read_csv(manifest, dtype=str).path
    for row in BAD_ROWS:
        (manifest.parent / paths[row]).write_bytes(b"not an image")
    return manifest


def _cli_args(manifest: Path, spec: str, out: Path) -> list[str]:
    return [
        "extract",
        str(manifest),
        "--encoder",
        spec,
        "--out",
        str(out),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--batch-size",
        str(BATCH),
        "--workers",
        "0",
        "--skip-bad",
        "--no-progress",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(
    nproc: int, program: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node N --master-port P <program>`` with one thread per rank
    (also used by test_store_urls.py)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # what the torchrun script runs
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *program,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _one_process(manifest: Path, spec: str, out: Path):
    """The same extraction in this process, with one compute thread like each torchrun rank
    (a CPU matmul's last bits may depend on how many threads split it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(
            manifest,
            spec,
            out,
            rows_per_shard=ROWS_PER_SHARD,
            batch_size=BATCH,
            num_workers=0,
            skip_bad=True,
            progress=False,
            log=lambda *_: None,
        )
    finally:
        torch.set_num_threads(threads)


def _contents(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with open_store(path) as store:
        (key,) = store.keys()
        group = store.group(key)
        arrays = {name: np.asarray(group.array(name)[:]) for name in ARRAYS}
        return arrays, group.attrs


def _assert_same_store(got: tuple, want: tuple) -> None:
    (arrays, attrs), (ref_arrays, ref_attrs) = got, want
    for name in ARRAYS:
        assert arrays[name].dtype == ref_arrays[name].dtype, name
        np.testing.assert_array_equal(arrays[name], ref_arrays[name], err_msg=name)
    assert set(attrs) == set(ref_attrs)
    for name in set(attrs) - set(RUN_ATTRS):
        assert attrs[name] == ref_attrs[name], name


@pytest.fixture(scope="module")
def reference(cohort, tiny_encoder_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-ref") / "one.zarr"
    result = _one_process(cohort, tiny_encoder_spec, out)
    assert (result.written, result.skipped, result.world_size) == (68, 2, 1)
    return _contents(out)


def test_shards_are_dealt_whole_and_disjoint():
    pending = np.array([*range(3, 16), *range(32, 40), *range(48, 64), 70, 71])
    for world in (1, 2, 3, 5):
        parts = [rank_rows(pending, 16, RankInfo(r, world)) for r in range(world)]
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), pending)
        shards = [set((p // 16).tolist()) for p in parts]
        for a in range(world):
            for b in range(a + 1, world):
                assert not shards[a] & shards[b], "two ranks share a shard"
    # round-robin over the pending shards (0, 2, 3, 4): a resumed run stays balanced
    assert assign_shards([0, 2, 3, 4], RankInfo(0, 2)) == [0, 3]
    assert assign_shards([0, 2, 3, 4], RankInfo(1, 2)) == [2, 4]


def test_rank_and_device_come_from_the_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    info = rank_from_env(env)
    assert info == RankInfo(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert not info.is_main and info.distributed
    assert rank_from_env({}) == RankInfo()
    assert rank_device("cuda", info) == "cuda:1"
    assert rank_device("cpu", info) == "cpu"
    assert rank_device("cuda:0", info) == "cuda:0"
    assert rank_device("auto", RankInfo()) == "auto"
    with pytest.raises(DistributedSetupError, match="RANK=4"):
        rank_from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_hdf5_is_refused_under_torchrun(cohort, tiny_encoder_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="HDF5 store takes one writing process"):
        extract(cohort, tiny_encoder_spec, tmp_path / "s.h5", progress=False, log=print)
    assert not (tmp_path / "s.h5").exists()


def test_two_ranks_make_the_store_one_process_makes(cohort, tiny_encoder_spec, reference, tmp_path):
    out = tmp_path / "two.zarr"
    proc = run_torchrun(
        2, ["-m", "embedcache", *_cli_args(cohort, tiny_encoder_spec, out)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "68 written, 2 skipped, 0 already done, of 70" in proc.stdout
    assert proc.stdout.count("written") == 1  # rank 0 alone reports
    got = _contents(out)
    _assert_same_store(got, reference)
    attrs, ref_attrs = got[1], reference[1]
    assert attrs["extraction"]["world_size"] == 2 and ref_attrs["extraction"]["world_size"] == 1
    assert attrs["extraction"]["complete"] and ref_attrs["extraction"]["complete"]
    assert len(attrs["skip_reasons"]) == 2  # both ranks' reasons, recorded by rank 0
    assert not list(tmp_path.glob("*.lock")), "rank 0 releases the writer lock"


#: torchrun program: the CLI, with rank 1 SIGKILLed right after it marked its first shard done.
KILL_RANK_1 = """
import os, signal, sys
from embedcache.cli import main
from embedcache.store.api import StoreGroup

original = StoreGroup.mark_done

def mark_done(self, rows):
    original(self, rows)
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)

StoreGroup.mark_done = mark_done
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_rank_is_picked_up_by_a_rerun_of_another_world_size(
    cohort, tiny_encoder_spec, reference, tmp_path
):
    out = tmp_path / "killed.zarr"
    child = tmp_path / "kill_rank_1.py"
    child.write_text(textwrap.dedent(KILL_RANK_1))
    proc = run_torchrun(2, [str(child), *_cli_args(cohort, tiny_encoder_spec, out)], tmp_path)
    assert proc.returncode != 0, "torchrun must report the killed rank"
    killed, attrs = _contents(out)
    assert killed["done"][16:32].all(), "rank 1 finished its first shard before it died"
    assert not killed["done"][48:64].any(), "rank 1 never reached its second shard"
    bad_id = str(killed["ids"][BAD_ROWS[1]])
    assert killed["skipped"][BAD_ROWS[1]] and bad_id not in attrs.get("skip_reasons", {})

    resumed = _one_process(cohort, tiny_encoder_spec, out)
    assert resumed.already_done == killed["done"].sum()
    assert resumed.written + resumed.skipped == (~killed["done"]).sum()
    _assert_same_store(_contents(out), reference)  # the lost skip reason is recovered too


def test_a_failing_rank_stops_the_job_and_the_others_say_which(cohort, tiny_encoder_spec, tmp_path):
    """Without --skip-bad, rank 1 meets the corrupt image of its first shard; rank 0 finishes
    its own shards, records the run as incomplete, and names rank 1's error."""
    table = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    manifest = cohort.parent / "one-bad.csv"  # only BAD_ROWS[1] (now row 19, rank 1's shard)
    table.drop(index=BAD_ROWS[0]).to_csv(manifest, index=False)
    out = tmp_path / "failed.zarr"
    args = [a for a in _cli_args(manifest, tiny_encoder_spec, out) if a != "--skip-bad"]
    proc = run_torchrun(2, ["-m", "embedcache", *args], tmp_path)
    assert proc.returncode != 0
    bad_path = str(cohort.parent / table.path[BAD_ROWS[1]])
    assert "embedcache extract: error: rank 1: ImageReadError" in proc.stderr  # rank 0's line
    assert bad_path in proc.stderr and "--skip-bad" in proc.stderr
    assert "embedcache/" not in proc.stderr.replace(bad_path, "")  # no traceback of ours
    # (torchrun itself prints a ChildFailedError traceback naming the failed ranks)
    arrays, attrs = _contents(out)
    shard = np.arange(len(arrays["done"])) // ROWS_PER_SHARD
    assert arrays["done"][shard % 2 == 0].all(), "rank 0 wrote all of its shards"
    assert not arrays["done"][16:32].any()
    assert attrs["extraction"] == {**attrs["extraction"], "world_size": 2, "complete": False}
