"""``embedcache``: a thin command line over :mod:`embedcache.extract` and :mod:`embedcache.store`.

Errors users can fix (bad manifest rows, unreadable images, locked or mismatched groups) print
one clear line and exit 2; bugs keep their traceback. ``extract`` runs as one rank of a
distributed job when started by ``torchrun`` (``torchrun --nproc-per-node 8 -m embedcache
extract ...``); rank 0 prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from embedcache.store.layout import DEFAULT_ROWS_PER_SHARD, STORE_DTYPES


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option of a URL store, repeatable (endpoint_url=http://host:9000, "
        "anon=true, client_kwargs.region_name=eu-west-1); default: the JSON in "
        "$EMBEDCACHE_STORAGE_OPTIONS",
    )


def _storage_options(args: argparse.Namespace) -> dict | None:
    """``--storage-option`` pairs, or ``None`` (then the environment variable is read)."""
    from embedcache.store.urls import parse_storage_options

    return parse_storage_options(args.storage_option) if args.storage_option else None


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="run one encoder over a cohort into a store")
    p.add_argument("manifest", help="manifest CSV/Parquet: image_id, path, patient_id, ...")
    p.add_argument(
        "--encoder",
        required=True,
        help="preset name (see `embedcache encoders`), hf:<hub-id-or-dir>, timm:<name>[@file] or open_clip:<arch>@<checkpoint>",
    )
    p.add_argument(
        "--out",
        required=True,
        help="store: a zarr folder, a .h5 file, or a zarr store URL (s3://bucket/cohort.zarr)",
    )
    p.add_argument(
        "--weights", help="hub id, local folder, or 'none' (random init; numbers mean nothing)"
    )
    p.add_argument(
        "--root", help="folder that relative image paths start from (default: the manifest's)"
    )
    p.add_argument("--format", choices=("zarr", "hdf5"), help="store format (default: from --out)")
    p.add_argument("--dtype", choices=STORE_DTYPES, default="float16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, help="decode workers (default: cores - 1, at most 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--skip-bad", action="store_true", help="record unreadable images and go on")
    p.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
    p.add_argument("--seed", type=int, default=0, help="seed of --weights none")
    p.add_argument(
        "--taps",
        metavar="lastN|B,B,...",
        help="also store the class (or pooled) token of these blocks as tap<b> arrays: lastN "
        "(DINOv2's linear evaluation uses last4) or block indices; single-scale ViTs only; "
        "part of the store key",
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow a hub model's own code to run"
    )
    p.add_argument("--break-lock", action="store_true", help="clear another process's writer lock")
    p.add_argument("--no-progress", action="store_true")
    _add_storage_options(p)


def _cmd_extract(args: argparse.Namespace) -> int:
    from embedcache.extract import extract

    result = extract(
        args.manifest,
        args.encoder,
        args.out,
        weights=args.weights,
        root=args.root,
        fmt=args.format,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
        skip_bad=args.skip_bad,
        rows_per_shard=args.rows_per_shard,
        break_lock=args.break_lock,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
        taps=args.taps,
        storage_options=_storage_options(args),
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 reports for the job
        return 0
    ranks = f" on {result.world_size} ranks" if result.world_size > 1 else ""
    print(
        f"{result.key}: {result.written} written, {result.skipped} skipped, "
        f"{result.already_done} already done, of {result.n_rows} "
        f"({result.images_per_s:.1f} images/s{ranks}) -> {result.store}"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from embedcache.store import open_store
    from embedcache.store.verify import store_summary

    with open_store(args.store, storage_options=_storage_options(args)) as store:
        summary = store_summary(store)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    from embedcache.store.verify import STATES

    print(f"{summary['path']} ({summary['format']}), {len(summary['groups'])} encoder group(s)")
    for g in summary["groups"]:
        grids = ", ".join(
            f"{name} {'x'.join(map(str, s['shape'][1:]))} (stride {s['stride']})"
            for name, s in g["grids"].items()
        )
        print(f"  {g['key']}: {g['preset']} [{g['weights']}]")
        print(
            f"    rows {g['done']}/{g['rows']} done, {g['skipped']} skipped; {g['dtype']}, "
            f"{g['bytes_per_image'] / 1e6:.2f} MB/image"
        )
        print(f"    global {g['global'][1]}; {grids}")
        if g["state"] != "complete":
            print(f"    {g['state']}: {STATES[g['state']]}")
        if g["counts"] == "scanned":
            print(
                "    (store format 1: counts read from the done/skipped flags; the next extract "
                "run into this group records them, which makes info instant)"
            )
        if g.get("taps"):
            print(f"    taps of blocks {g['taps']['blocks']}, {g['taps']['dim']} each")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from embedcache.store import open_store
    from embedcache.store.verify import verify_group

    ok = True
    with open_store(args.store, storage_options=_storage_options(args)) as store:
        keys = [args.key] if args.key else store.keys()
        reports = [verify_group(store.group(k)) for k in keys]
    for r in reports:
        ok &= r.ok
        status = "ok" if r.ok else "FAILED"
        print(f"{r.key}: {status}: {r.done}/{r.rows} done, {r.skipped} skipped")
        for problem in r.problems:
            print(f"  - {problem}")
    return 0 if ok else 1


def _cmd_encoders(args: argparse.Namespace) -> int:
    from embedcache.encoders._catalogue import catalogue

    rows = [("name", "input", "global", "grid16 (stride)", "grid32 (stride)", "params", "source")]
    for s in catalogue():
        g16, g32 = s.grids[16], s.grids[32]
        rows.append(
            (
                s.name,
                f"{s.input_size} {s.resize}",
                str(s.global_dim),
                f"{g16[0]}x{g16[1]}x{g16[2]} ({g16[3]})",
                f"{g32[0]}x{g32[1]}x{g32[2]} ({g32[3]})",
                f"{s.parameters_m:.1f}M",
                s.source,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(
        "\nalso: hf:<hub-id-or-dir> (ViT-like Hugging Face models), timm:<name>[@<file>], "
        "open_clip:<arch>@<checkpoint>"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_extract(sub)
    p = sub.add_parser("info", help="what a store holds")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true")
    _add_storage_options(p)
    p = sub.add_parser("verify", help="check done counts, NaN/inf and keys")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--key", help="one encoder group (default: all)")
    _add_storage_options(p)
    sub.add_parser("encoders", help="list encoder presets")
    return parser


_COMMANDS = {
    "extract": _cmd_extract,
    "info": _cmd_info,
    "verify": _cmd_verify,
    "encoders": _cmd_encoders,
}


#: Errors users can fix, as (module, class). Looked up only in modules already imported: an
#: error can only have been raised by a module that was loaded, and importing them all here
#: would load torch and the encoders for `info` and `verify`.
_USER_ERRORS = (
    ("embedcache.intake.errors", "ImageReadError"),
    ("embedcache.intake.manifest", "ManifestError"),
    ("embedcache.store.lock", "StoreLockedError"),
    ("embedcache.store.api", "StoreMismatchError"),
    ("embedcache.store.layout", "StoreOverflowError"),
    ("embedcache.store.urls", "StoreURLError"),
    ("embedcache.store.faults", "StoreWriteError"),
    ("embedcache.encoders.hub", "WeightsUnavailableError"),
    ("embedcache.encoders._weights", "CheckpointError"),
    ("embedcache.extract.distributed", "RankFailedError"),
    ("embedcache.extract.distributed", "DistributedSetupError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes printed as one line (exit 2) rather than with a traceback."""
    loaded = tuple(
        getattr(sys.modules[module], name)
        for module, name in _USER_ERRORS
        if module in sys.modules and hasattr(sys.modules[module], name)
    )
    return (*loaded, FileNotFoundError, KeyError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"embedcache {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
