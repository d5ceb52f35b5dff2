"""FeatureSet: one encoder group of a store joined with its manifest, by image id, lazily.

::

    fs = FeatureSet.open("cohort.zarr", "manifest.csv", encoder="rad-dino")
    y = fs.labels("pneumothorax")          # (n,), manifest order
    X = fs.load()                           # (n, D) float32 global vectors
    X_test = fs.load(test_positions)        # any rows, read via the store's fast row reader

Rows are joined by ``image_id`` and never by position. Usable rows are those the extractor
finished (``done``) and did not skip; skipped rows (unreadable images under ``--skip-bad``) are
left out and counted in ``excluded``. A group still being extracted (or whose extraction
stopped) is refused, naming its done count, unless ``allow_partial=True`` (``--allow-partial``):
then only the rows done when it was opened are used and the others are ``excluded`` too.
Everything else that does not line up is an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from embedcache.intake.manifest import Manifest, load_manifest
from embedcache.store.api import EmbeddingStore, StoreGroup, open_store
from embedcache.store.layout import GLOBAL, TAP_ARRAY, parse_key

__all__ = ["FeatureError", "FeatureSet", "binary_labels"]

MAX_LISTED = 10
#: Rows read from the store per ``read_rows`` call (bounds the temporary memory of ``load``).
READ_BLOCK = 4096


class FeatureError(ValueError):
    """The store and the manifest do not line up, or a requested column/encoder is unusable."""


class FeatureSet:
    """An encoder group's features for the manifest's images, in manifest order.

    Attributes:
        key: encoder group key. feature: ``global``, ``grid16``, ``grid32``, a tap (``tap11``)
            or ``taps`` (all taps side by side), see :func:`feature_arrays`.
        group: the :class:`StoreGroup`. manifest: the :class:`Manifest`.
        ids: ``(n,)`` str image ids of the usable rows, manifest order.
        rows: ``(n,)`` int store row of each id.
        table: manifest rows aligned with ``ids`` (index reset).
        patient_ids: ``(n,)`` str.
        excluded: number of manifest rows left out because the extractor skipped them (or,
            with ``allow_partial``, had not extracted them yet).
        excluded_reasons: ``{image_id: reason}`` for those rows.
    """

    def __init__(
        self,
        group: StoreGroup,
        manifest: Manifest,
        feature: str = GLOBAL,
        *,
        allow_subset: bool = False,
        allow_partial: bool = False,
        store: EmbeddingStore | None = None,
    ):
        self._arrays = feature_arrays(group, feature)
        self.key, self.feature, self.group, self.manifest = group.key, feature, group, manifest
        self._store = store  # kept open for as long as the FeatureSet lives
        self._join(allow_subset, allow_partial)

    @classmethod
    def open(
        cls,
        store: str | os.PathLike | EmbeddingStore,
        manifest: str | os.PathLike | Manifest,
        encoder: str | None = None,
        feature: str = GLOBAL,
        *,
        root: str | os.PathLike | None = None,
        allow_subset: bool = False,
        allow_partial: bool = False,
    ) -> FeatureSet:
        """Open ``store`` (path or open store) and ``manifest`` (path or loaded) and join them.

        Args:
            encoder: a group key, a unique key prefix or a preset name (``rad-dino`` for
                ``rad-dino-1a2b3c4d5e6f``); ``None`` when the store holds one group.
            feature: which feature array ``load`` reads.
            root: folder for the manifest's relative paths (images need not exist).
            allow_subset: accept store rows that the manifest does not list (a manifest
                that selects part of the extracted cohort); otherwise they are an error.
            allow_partial: use only the rows done so far of a group whose extraction is
                running or unfinished (the others are excluded); otherwise such a group is
                refused with its done count.
        """
        if not isinstance(store, EmbeddingStore):
            store = open_store(store)
        if not isinstance(manifest, Manifest):
            manifest = load_manifest(manifest, root, check_files=False)
        group = store.group(resolve_encoder(store.keys(), encoder, store.path))
        return cls(
            group,
            manifest,
            feature,
            allow_subset=allow_subset,
            allow_partial=allow_partial,
            store=store,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"FeatureSet(key={self.key!r}, feature={self.feature!r}, n={len(self)}, "
            f"shape={self.shape}, excluded={self.excluded})"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, ...)``: the shape ``load()`` returns."""
        shapes = [self.group.array(name).shape[1:] for name in self._arrays]
        if len(shapes) == 1:
            return (len(self), *shapes[0])
        return (len(self), sum(shape[-1] for shape in shapes))  # taps side by side

    def labels(self, column: str) -> np.ndarray:
        """``(n,)`` values of a manifest column for the usable rows (bools as 0/1).

        Raises FeatureError naming the column and listing the available ones, or naming the
        image ids whose label is missing.
        """
        if column not in self.table.columns:
            raise FeatureError(
                f"no label column {column!r} in manifest {self.manifest.source}; columns: "
                f"{', '.join(map(repr, self.table.columns))}"
            )
        values = self.table[column]
        missing = values.isna().to_numpy()
        if missing.any():
            bad = self.ids[missing]
            raise FeatureError(
                f"label column {column!r} is empty for {len(bad)} image(s): "
                f"{_listed(bad)}; drop or fill those rows in the manifest"
            )
        if pd.api.types.is_bool_dtype(values):
            return values.to_numpy().astype(np.int64)
        return values.to_numpy()

    def load(self, index: Any = None) -> np.ndarray:
        """float32 features ``(len(index), ...)`` for positions ``index`` into ``ids``.

        ``None`` loads all rows. Rows are read with ``StoreGroup.read_rows`` in sorted
        blocks (sequential on disk) and returned in the requested order.
        """
        positions = np.arange(len(self)) if index is None else np.asarray(index).reshape(-1)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        for start in range(0, len(rows), READ_BLOCK):
            take = order[start : start + READ_BLOCK]
            parts = [self.group.read_rows(name, rows[take]) for name in self._arrays]
            out[take] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return out

    def _join(self, allow_subset: bool, allow_partial: bool) -> None:
        store_ids = np.asarray(self.group.ids).astype(str)
        manifest_ids = np.asarray(self.manifest.image_ids, dtype=str)
        position = pd.Index(store_ids)
        if not position.is_unique:
            raise FeatureError(f"encoder group {self.key} holds repeated image ids")
        rows = position.get_indexer(manifest_ids)
        absent = manifest_ids[rows < 0]
        if len(absent):
            raise FeatureError(
                f"{len(absent)} of {len(manifest_ids)} manifest images are not in encoder group "
                f"{self.key}: {_listed(absent)}; extract them first (embedcache extract with "
                "this manifest)"
            )
        extra = np.setdiff1d(store_ids, manifest_ids)
        if len(extra) and not allow_subset:
            raise FeatureError(
                f"encoder group {self.key} holds {len(extra)} image(s) the manifest does not "
                f"list: {_listed(extra)}; pass allow_subset=True (--allow-subset) to probe the "
                "manifest's subset of the store"
            )
        # One read of the flags: a row done now stays done, and its features were written
        # before it was flagged, so a group being extracted reads consistently.
        group_done = self.group.done
        done, skipped = group_done[rows], self.group.skipped[rows]
        unfinished = manifest_ids[~done]
        if len(unfinished) and not allow_partial:
            raise FeatureError(
                f"{len(unfinished)} manifest images were never extracted into {self.key} "
                f"(extraction unfinished or still running: {int(group_done.sum())} of "
                f"{len(group_done)} rows done): {_listed(unfinished)}; run embedcache extract "
                f"again to complete it, or pass allow_partial=True (--allow-partial) to use the "
                f"{len(manifest_ids) - len(unfinished)} done rows"
            )
        reasons = self.group.skip_reasons()
        self.excluded_reasons = {i: reasons.get(i, "skipped") for i in manifest_ids[skipped]}
        self.excluded_reasons.update(
            {i: "not extracted yet (a partial group read with allow_partial)" for i in unfinished}
        )
        self.excluded = len(self.excluded_reasons)
        keep = done & ~skipped
        self.ids = manifest_ids[keep]
        self.rows = rows[keep].astype(np.int64)
        self.table = self.manifest.table.iloc[np.flatnonzero(keep)].reset_index(drop=True)
        if "patient_id" in self.table.columns:
            self.patient_ids = self.table["patient_id"].to_numpy(dtype=str)
        else:  # a cohort without patient ids: every image its own patient
            self.patient_ids = self.ids.copy()


def feature_arrays(group: StoreGroup, feature: str) -> list[str]:
    """The store arrays behind ``feature``: ``global``, ``grid16``, ``grid32``, a tap
    (``tap11``), or ``taps``: every tap of the group, side by side in block order (DINOv2's
    linear evaluation input is the last 4 blocks' class tokens)."""
    names = list(group.layout.feature_names())
    taps = [name for name in names if TAP_ARRAY.match(name)]
    if feature == "taps" and taps:
        return taps
    if feature in names:
        return [feature]
    extra = ", taps" if taps else " (no taps: extract with --taps to store them)"
    raise FeatureError(
        f"unknown feature {feature!r}; encoder group {group.key} holds {', '.join(names)}{extra}"
    )


def binary_labels(
    labels: Callable[[str], np.ndarray], columns: Sequence[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(n, k)`` int64 0/1 labels of ``columns`` (positive = the larger of the two values) and
    the positive value of each column; ``labels(column)`` gives a column's ``(n,)`` values
    (``FeatureSet.labels``, or the fine-tune's manifest rows). Not two values: FeatureError."""
    out, positives = [], {}
    for column in columns:
        values = labels(column)
        classes = np.unique(values)
        if len(classes) != 2:
            raise FeatureError(
                f"label column {column!r} has {len(classes)} distinct values "
                f"({classes[:5].tolist()}); a binary probe needs exactly two"
            )
        out.append((values == classes[1]).astype(np.int64))
        positives[column] = classes[1].item() if hasattr(classes[1], "item") else classes[1]
    return np.column_stack(out), positives


def resolve_encoder(keys: list[str], encoder: str | None, where: object = "the store") -> str:
    """The one group key that ``encoder`` names (key, unique prefix or preset name)."""
    listed = ", ".join(keys) or "(none)"
    if encoder is None:
        if len(keys) == 1:
            return keys[0]
        raise FeatureError(f"{where} holds {len(keys)} encoder groups; choose one of: {listed}")
    if encoder in keys:
        return encoder
    matches = [k for k in keys if k.startswith(encoder)]
    presets = [k for k in matches if parse_key(k)[0] == encoder]
    for found in (matches, presets):
        if len(found) == 1:
            return found[0]
    if matches:
        raise FeatureError(
            f"encoder {encoder!r} matches {len(matches)} groups in {where}: "
            f"{', '.join(matches)}; give the full key"
        )
    raise FeatureError(f"no encoder group {encoder!r} in {where}; groups: {listed}")


def _listed(ids: np.ndarray) -> str:
    shown = ", ".join(map(repr, ids[:MAX_LISTED].tolist()))
    return shown + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")
