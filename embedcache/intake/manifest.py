"""The cohort manifest: one row per image, read from CSV, TSV or Parquet and validated on load.

Required columns are image_id, path and patient_id (patient_id can be dropped from `required`
for a cohort without one, but then nothing can be grouped by patient). Every other column
(labels, metadata, mask paths, RLE strings) is kept exactly as pandas reads it.

Decisions worth knowing:
- image_id, patient_id and path are read as text ("001" stays "001"; integer Parquet ids become
  their decimal text) and stripped of surrounding spaces. Empty cells and pandas' NA markers
  ("NA", "nan", "NULL", ...) in them are errors, never silently a shared id.
- Column names are stripped (SIIM's header reads "ImageId, EncodedPixels").
- Relative paths resolve against `root`, else the manifest's folder; absolute paths are kept.
  Paths are made absolute and normalised lexically (no symlink resolution, no file system
  calls), so a symlinked cohort folder keeps the path its user sees.
- digest() covers only the ordered (image_id, path relative to root) pairs: labels can change
  and the folder can move without invalidating embeddings; reordering or renaming does not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ID_COLUMNS = ("image_id", "patient_id", "path")
"""Columns read as text and checked for empty cells."""

MAX_LISTED = 10
"""How many offending rows an error message lists before giving only the count."""

_DIGEST_VERSION = b"embedcache manifest digest v1\0"


class ManifestError(ValueError):
    """An unreadable or invalid manifest; str(err) names the file, and the rows and columns."""

    def __init__(self, source: str | os.PathLike, reason: str):
        self.source = os.fsdecode(source)
        self.reason = reason
        super().__init__(self.source, reason)  # (source, reason): pickles across processes

    def __str__(self) -> str:
        return f"manifest {self.source}: {self.reason}"


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames elementwise has no truth
class Manifest:
    """A validated manifest.

    table: one row per image in manifest order; image_id, patient_id (str), path (str, absolute,
        normalised) and every other column untouched. Data row n is table.iloc[n - 1].
    source: the manifest file. root: the folder relative paths were resolved against.
    """

    table: pd.DataFrame
    source: Path
    root: Path

    def __len__(self) -> int:
        return len(self.table)

    @property
    def image_ids(self) -> list[str]:
        return self.table["image_id"].tolist()

    @property
    def paths(self) -> list[str]:
        """Absolute image paths, manifest order."""
        return self.table["path"].tolist()

    @property
    def patient_ids(self) -> list[str]:
        if "patient_id" not in self.table.columns:
            raise ManifestError(self.source, "has no patient_id column; cannot group by patient")
        return self.table["patient_id"].tolist()

    def digest(self) -> str:
        """sha256 hex of the ordered (image_id, path relative to root) pairs, and nothing else.

        Paths are taken relative to root with '/' separators, so moving the cohort folder
        (manifest and images together) keeps the digest; a relative and an absolute spelling of
        the same file under root agree. Labels and other columns do not enter it.
        """
        root = str(self.root)
        fields: list[str] = []
        for image_id, path in zip(self.table["image_id"], self.table["path"], strict=True):
            fields += (image_id, _relative_to(path, root))
        # NUL cannot occur in a path and separates the fields unambiguously.
        return hashlib.sha256(_DIGEST_VERSION + "\0".join(fields).encode("utf-8")).hexdigest()

    def resolve(self, column: str, value: str) -> str:
        """Absolute path for `value`, a path written in `column` (e.g. a mask column).

        Relative values resolve against root, as image paths do; absolute ones are kept.
        """
        if column not in self.table.columns:
            raise ManifestError(self.source, f"no column {column!r}; columns: {_names(self.table)}")
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(self.source, f"column {column!r}: empty path {value!r}")
        return _absolute(value.strip(), str(self.root))


def load_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    required: Sequence[str] = ("image_id", "path", "patient_id"),
) -> Manifest:
    """Read and validate a manifest (.csv, .tsv, .parquet; .csv.gz and .tsv.gz too).

    root: folder for relative image paths (default: the manifest's folder).
    check_files: every image must exist (else they are left for the extractor to skip).
    required: columns that must be present; image_id and path always are.
    Raises ManifestError naming the file, and each offending data row (1-based, with its
    image_id where known) and column.
    """
    source = Path(os.path.abspath(path))
    required = list(dict.fromkeys(["image_id", "path", *[c.strip() for c in required]]))
    table = _read_table(source)
    _check_columns(source, table, required)
    if len(table) == 0:
        raise ManifestError(source, "has no data rows")
    for column in ID_COLUMNS:
        if column in table.columns:
            table[column] = _as_text(source, table, column)
    _check_cells(source, table)
    _check_unique_ids(source, table)
    root_dir = Path(os.path.abspath(root if root is not None else source.parent))
    table["path"] = [_absolute(p, str(root_dir)) for p in table["path"]]
    if check_files:
        _check_files(source, table)
    return Manifest(table=table, source=source, root=root_dir)


def _read_table(source: Path) -> pd.DataFrame:
    name = source.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            table = pd.read_parquet(source)
        elif name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
            sep = "\t" if ".tsv" in name else ","
            # dtype=str needs the header as written (it may carry spaces), so read it first.
            header = pd.read_csv(source, sep=sep, nrows=0).columns
            as_text = {raw: str for raw in header if str(raw).strip() in ID_COLUMNS}
            table = pd.read_csv(source, sep=sep, dtype=as_text)
        else:
            raise ManifestError(source, "unsupported format; expected .csv, .tsv or .parquet")
    except ManifestError:
        raise
    except FileNotFoundError:
        raise ManifestError(source, "file not found") from None
    except pd.errors.EmptyDataError:
        raise ManifestError(source, "empty file (no header, no rows)") from None
    except Exception as exc:
        raise ManifestError(source, f"cannot be read ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table.reset_index(drop=True)


def _check_columns(source: Path, table: pd.DataFrame, required: list[str]) -> None:
    repeated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if repeated:
        raise ManifestError(source, f"repeated column name(s) {', '.join(map(repr, repeated))}")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ManifestError(
            source,
            f"missing required column(s) {', '.join(map(repr, missing))}; "
            f"columns present: {_names(table)}",
        )


def _as_text(source: Path, table: pd.DataFrame, column: str) -> pd.Series:
    """Ids and paths as stripped text; missing values stay missing (pandas 3 'str' dtype)."""
    series = table[column]
    if pd.api.types.is_float_dtype(series) or pd.api.types.is_bool_dtype(series):
        # 1.0 or True as an id is a type accident upstream (e.g. ints with gaps saved as float).
        raise ManifestError(
            source, f"column {column!r} holds {series.dtype} values; it must be text or integer"
        )
    return series.astype("str").str.strip()


def _check_cells(source: Path, table: pd.DataFrame) -> None:
    problems = []
    for column in (c for c in ID_COLUMNS if c in table.columns):
        empty = table[column].isna() | (table[column] == "")
        problems += [(row, column) for row in empty[empty].index]
    if problems:
        problems.sort()
        listed = "; ".join(f"{_row(table, r)}, column {c!r}" for r, c in problems[:MAX_LISTED])
        raise ManifestError(
            source,
            f"{len(problems)} empty cell(s) (blank or an NA marker like 'NA'/'nan') in id or path "
            f"columns: {listed}{_more(len(problems))}",
        )


def _check_unique_ids(source: Path, table: pd.DataFrame) -> None:
    ids = table["image_id"]
    repeated = ids[ids.duplicated(keep=False)]
    if repeated.empty:
        return
    groups = repeated.groupby(repeated, sort=False).groups  # id -> index of its rows
    listed = "; ".join(
        f"image_id {image_id!r} in data rows {_and(i + 1 for i in rows)}"
        for image_id, rows in list(groups.items())[:MAX_LISTED]
    )
    raise ManifestError(
        source, f"{len(groups)} duplicate image_id(s): {listed}{_more(len(groups))}"
    )


def _check_files(source: Path, table: pd.DataFrame) -> None:
    missing = [row for row, p in enumerate(table["path"]) if not os.path.isfile(p)]
    if missing:
        listed = "; ".join(
            f"{_row(table, r)}: {table['path'].iat[r]}" for r in missing[:MAX_LISTED]
        )
        raise ManifestError(
            source,
            f"{len(missing)} of {len(table)} image files not found: {listed}{_more(len(missing))} "
            "(check_files=False defers them to the extractor, which records them as skipped)",
        )


def _absolute(path: str, root: str) -> str:
    return os.path.normpath(os.path.join(root, path))  # join keeps an absolute path as is


def _relative_to(path: str, root: str) -> str:
    """path relative to root, '/'-separated; absolute where no relative form exists."""
    prefix = root.rstrip(os.sep) + os.sep
    if path.startswith(prefix):  # the common case, without relpath's cost
        relative = path[len(prefix) :]
    else:
        try:
            relative = os.path.relpath(path, root)
        except ValueError:  # another drive on Windows
            relative = path
    return relative.replace(os.sep, "/")


def _row(table: pd.DataFrame, row: int) -> str:
    """'data row n (image_id 'x')': 1-based, header not counted."""
    image_id = table["image_id"].iat[row] if "image_id" in table.columns else None
    known = isinstance(image_id, str) and image_id != ""
    return f"data row {row + 1}" + (f" (image_id {image_id!r})" if known else "")


def _names(table: pd.DataFrame) -> str:
    return ", ".join(map(repr, table.columns))


def _and(numbers: object) -> str:
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _more(count: int) -> str:
    return f"; and {count - MAX_LISTED} more" if count > MAX_LISTED else ""
