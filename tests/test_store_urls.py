"""Stores at fsspec URLs: memory://, file:// and a real S3-compatible server on loopback.

The S3 server is moto's (``moto_server``), which speaks the S3 HTTP protocol; s3fs talks to it
over a socket exactly as it would to AWS, so nothing of the protocol is mocked here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from test_distributed_extract import run_torchrun  # the torchrun launcher of those tests

from embedcache.cli import main as cli_main
from embedcache.extract import extract
from embedcache.store import GroupLock, StoreLockedError, open_store
from embedcache.store.urls import (
    STORAGE_OPTIONS_ENV,
    StoreURLError,
    locate,
    parse_storage_options,
    storage_options_from_env,
)
from probes.core.features import FeatureSet

ARRAYS = ("ids", "global", "grid16", "grid32", "done", "skipped")
RUN_ATTRS = ("created", "command", "extraction")  # legitimately differ between two runs


def _extract(manifest, spec, out, **kw):
    return extract(
        manifest,
        spec,
        out,
        rows_per_shard=4,
        batch_size=3,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
        **kw,
    )


def _contents(path, **kw):
    with open_store(path, **kw) as store:
        (key,) = store.keys()
        group = store.group(key)
        arrays = {name: np.asarray(group.array(name)[:]) for name in ARRAYS}
        return arrays, group.attrs


def _assert_same_store(got, want):
    for name in ARRAYS:
        np.testing.assert_array_equal(got[0][name], want[0][name], err_msg=name)
    assert set(got[1]) == set(want[1])
    for name in set(got[1]) - set(RUN_ATTRS):
        assert got[1][name] == want[1][name], name


@pytest.fixture(scope="module")
def local_reference(phantom_manifest, tiny_encoder_spec, tmp_path_factory):
    """The phantom cohort extracted into a local folder, with one compute thread (as the
    torchrun ranks of the S3 test run)."""
    out = tmp_path_factory.mktemp("url-ref") / "local.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _extract(phantom_manifest, tiny_encoder_spec, out)
    finally:
        torch.set_num_threads(threads)
    return _contents(out)


@pytest.fixture
def memory_url():
    """A fresh memory:// store URL, removed afterwards (the memory filesystem is global)."""
    prefix = f"memory://embedcache-test-{uuid.uuid4().hex}"
    yield f"{prefix}/cohort.zarr"
    fs, path = fsspec.core.url_to_fs(prefix)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_locations_and_storage_options(tmp_path, monkeypatch):
    local = locate(f"file://{tmp_path}/s.zarr")
    assert local.local == tmp_path / "s.zarr" and not local.is_remote
    assert locate(tmp_path / "s.h5").local == tmp_path / "s.h5"
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, '{"endpoint_url": "http://127.0.0.1:9"}')
    remote = locate("s3://bucket/cohorts/s.zarr/")
    assert remote.url == "s3://bucket/cohorts/s.zarr" and remote.name == "s.zarr"
    assert remote.storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    assert locate("s3://b/s.zarr", {"anon": True}).storage_options == {"anon": True}
    assert parse_storage_options(
        ["endpoint_url=http://h:9000", "anon=true", "client_kwargs.region_name=eu-west-1"]
    ) == {
        "endpoint_url": "http://h:9000",
        "anon": True,
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    with pytest.raises(StoreURLError, match="key=value"):
        parse_storage_options(["endpoint_url"])
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, "{not json")
    with pytest.raises(StoreURLError, match=STORAGE_OPTIONS_ENV):
        storage_options_from_env()


def test_memory_and_file_urls_hold_the_local_store_bit_for_bit(
    phantom_manifest, tiny_encoder_spec, local_reference, memory_url, tmp_path
):
    file_url = f"file://{tmp_path}/file.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for url in (memory_url, file_url):
            result = _extract(phantom_manifest, tiny_encoder_spec, url)
            assert result.written == 21
    finally:
        torch.set_num_threads(threads)
    _assert_same_store(_contents(memory_url), local_reference)
    _assert_same_store(_contents(file_url), local_reference)
    assert (tmp_path / "file.zarr" / "zarr.json").is_file()  # file:// is a plain local folder

    # Probes read a URL store through the same API: row reads fall back to zarr's own path.
    with open_store(memory_url) as store:
        group = store.group(store.keys()[0])
        rows = [20, 3, 7]
        np.testing.assert_array_equal(
            group.read_rows("grid16", rows), local_reference[0]["grid16"][rows]
        )
        assert not group._readers["grid16"].fast
    features = FeatureSet.open(memory_url, phantom_manifest, feature="grid32")
    np.testing.assert_array_equal(features.load(), local_reference[0]["grid32"])


def test_resume_on_an_object_store(phantom_manifest, tiny_encoder_spec, memory_url):
    first = _extract(phantom_manifest, tiny_encoder_spec, memory_url)
    complete = _contents(memory_url)
    with open_store(memory_url, "a") as store:  # forget shard 2: as if a run died in it
        group = store.group(first.key)
        done = group.done
        done[8:12] = False
        group.array("done")[:] = done
        group.array("grid16")[8:12] = 0
    resumed = _extract(phantom_manifest, tiny_encoder_spec, memory_url)
    assert (resumed.written, resumed.already_done) == (4, 17)
    _assert_same_store(_contents(memory_url), complete)


def test_hdf5_at_a_url_is_refused_in_one_line(
    phantom_manifest, tiny_encoder_spec, memory_url, capsys
):
    with pytest.raises(StoreURLError, match="HDF5 stores are local files only"):
        open_store(memory_url.replace(".zarr", ".h5"), "a")
    args = ["extract", str(phantom_manifest), "--encoder", tiny_encoder_spec, "--no-progress"]
    assert cli_main([*args, "--out", memory_url.replace(".zarr", ".h5"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "HDF5 stores are local files only" in err and err.count("\n") == 1


def test_the_lock_object_is_exclusive_and_cleared_when_stale(memory_url):
    key = "enc-0123456789ab"
    with GroupLock(memory_url, key) as held:
        fs, _ = fsspec.core.url_to_fs(memory_url)
        assert fs.exists(held._file.path)
        with pytest.raises(StoreLockedError, match=f"process {os.getpid()} on host"):
            GroupLock(memory_url, key).acquire()
    assert not fs.exists(held._file.path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = {"host": socket.gethostname(), "pid": dead.pid}
    fs.pipe_file(held._file.path, json.dumps(owner).encode())
    with GroupLock(memory_url, key):  # the dead owner's lock is cleared
        pass


# --- a real S3-compatible server on loopback ---------------------------------------------------

CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """``moto_server`` on a free loopback port; yields its endpoint URL with a bucket made.
    Its request recorder (off until started, see :func:`_requests_of`) writes to a temp file."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(sys.executable).with_name("moto_server")
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {endpoint}") from None
                time.sleep(0.1)
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["key"],
            aws_secret_access_key=CREDENTIALS["secret"],
            region_name="us-east-1",
        ).create_bucket(Bucket="cohorts")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_options(s3_server):
    return {"endpoint_url": s3_server, **CREDENTIALS}


def test_cli_extracts_into_s3_and_reads_back(
    phantom_manifest, tiny_encoder_spec, local_reference, s3_options, monkeypatch, capsys
):
    url = f"s3://cohorts/{uuid.uuid4().hex}/cohort.zarr"
    options = [f"--storage-option={k}={v}" for k, v in s3_options.items()]
    args = ["extract", str(phantom_manifest), "--encoder", tiny_encoder_spec, "--out", url]
    args += ["--rows-per-shard", "4", "--batch-size", "3", "--workers", "0", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main([*args, *options]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "21 written, 0 skipped, 0 already done, of 21" in capsys.readouterr().out
    _assert_same_store(_contents(url, storage_options=s3_options), local_reference)

    fs = fsspec.filesystem("s3", **s3_options)
    objects = fs.find(url)
    assert any(o.endswith("/grid16/c/5/0/0/0") for o in objects)  # shard 5 as one object
    assert not fs.glob(f"{url}.*.lock"), "the lock object is removed at the end"

    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(s3_options))  # what ranks would read
    assert cli_main(["info", url, "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert (group["done"], group["rows"]) == (21, 21)
    assert cli_main(["verify", url]) == 0


def test_the_s3_lock_is_a_conditional_put(s3_options):
    url = f"s3://cohorts/{uuid.uuid4().hex}/cohort.zarr"
    key = "enc-0123456789ab"
    with GroupLock(url, key, storage_options=s3_options):
        with pytest.raises(StoreLockedError, match="lock object s3://cohorts/"):
            GroupLock(url, key, storage_options=s3_options).acquire()
        with GroupLock(url, key, storage_options=s3_options, break_lock=True):
            pass  # the user's call: taken over
    with pytest.raises(StoreURLError, match="root of its bucket"):
        GroupLock("s3://cohorts", key, storage_options=s3_options)


def test_two_ranks_extract_into_s3(
    phantom_manifest, tiny_encoder_spec, local_reference, s3_options, tmp_path
):
    url = f"s3://cohorts/{uuid.uuid4().hex}/cohort.zarr"
    args = ["extract", str(phantom_manifest), "--encoder", tiny_encoder_spec, "--out", url]
    args += ["--rows-per-shard", "4", "--batch-size", "3", "--workers", "0", "--no-progress"]
    env = {STORAGE_OPTIONS_ENV: json.dumps(s3_options)}
    proc = run_torchrun(2, ["-m", "embedcache", *args], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "21 written" in proc.stdout and "on 2 ranks" in proc.stdout
    got = _contents(url, storage_options=s3_options)
    _assert_same_store(got, local_reference)
    assert got[1]["extraction"]["world_size"] == 2


def _requests_of(endpoint: str, action) -> list[tuple[str, str]]:
    """``(method, path)`` of every request the S3 server received while ``action()`` ran,
    from moto's own request recorder."""

    def recorder(what: str) -> str:
        request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{what}", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    recorder("reset-recording")
    recorder("start-recording")
    try:
        action()
    finally:
        recorder("stop-recording")
    with urllib.request.urlopen(f"{endpoint}/moto-api/recorder/download-recording") as response:
        lines = response.read().decode().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return [(e["method"], urllib.parse.urlsplit(e["url"]).path) for e in entries]


def test_info_costs_the_same_requests_at_any_row_count(s3_options, s3_server, tmp_path):
    """``embedcache info`` as a whole process against the S3 server: the same requests for a
    group of 256 rows and of 25,600 (whose ``done`` flags alone are 4 and 400 objects)."""
    from embedcache.store import GroupLayout

    prefix = uuid.uuid4().hex
    env = {**os.environ, STORAGE_OPTIONS_ENV: json.dumps(s3_options), "HF_HUB_OFFLINE": "1"}
    seen, scans = {}, {}
    for n in (256, 25_600):
        url = f"s3://cohorts/{prefix}/n{n}.zarr"
        layout = GroupLayout(
            n_rows=n, global_dim=4, grid_shapes={16: (1, 1, 2), 32: (1, 1, 2)}, rows_per_shard=64
        )
        with open_store(url, "a", storage_options=s3_options) as store:
            group = store.create_group("enc-0123456789ab", layout, np.arange(n).astype(str), {})
            group.mark_done(np.arange(n))

        def info(url=url, n=n):
            proc = subprocess.run(
                [sys.executable, "-m", "embedcache", "info", url, "--json"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            (group,) = json.loads(proc.stdout)["groups"]
            assert (group["done"], group["rows"], group["counts"]) == (n, n, "recorded")

        requests = _requests_of(s3_server, info)
        seen[n] = sorted((method, path.replace(f"n{n}.zarr", "STORE")) for method, path in requests)

        def scan(url=url):
            with open_store(url, storage_options=s3_options) as store:
                assert store.group("enc-0123456789ab").done.all()  # what info read before

        scans[n] = len(_requests_of(s3_server, scan))
    assert seen[256] == seen[25_600], (seen[256], seen[25_600])
    assert len(seen[256]) <= 12, "\n".join(map(str, seen[256]))
    assert scans[25_600] >= scans[256] + 396  # the recorder does count every chunk read
