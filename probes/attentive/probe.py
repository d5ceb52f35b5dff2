"""Attentive probe: learned-query attention pooling over cached grid tokens, then a linear
classifier, trained on minibatches streamed from the store.

A classifier on the global vector (or the mean of the grid) cannot see a finding that occupies
a few patches: averaging dilutes it by the number of patches. The attentive probe learns where
to look: ``n_queries`` queries attend over the ``h x w`` tokens of ``grid16`` or ``grid32``, and
a linear classifier reads the pooled vectors (the model and its cheap exact rewrite are in
:mod:`probes.attentive.pool`). AdamW on binary cross-entropy, early stopping on the validation
loss with the best epoch's weights restored, as the segmentation probe::

    probe = AttentiveProbe(grid="grid16").fit(train_grids, y_train, X_val=val_grids, y_val=y_val)
    probe.predict_proba(test_grids)[:, 1]          # (n,)
    maps = probe.patch_maps(test_grids)            # {"attention": (n, h, w), "score": (n, h, w)}

Grids are a FeatureSet (streamed from its store group), a :class:`~probes.core.grids.GridSource`
or an ``(n, h, w, C)`` array. Like :class:`~probes.segmentation.probe.SegmentationProbe`, the
validation set goes to ``fit`` as ``eval_set=(X_val, y_val)`` (inputs are streams, not arrays).
Memory holds a few minibatches whatever N; on CPU the rows are views of the store's
memory-mapped shards, converted once each in cache (:mod:`probes.attentive.step`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from probes.attentive.pool import AttentionPool
from probes.attentive.step import batch_loss, batch_outputs, batch_step
from probes.core.grids import GridSource, _Stream, as_grids, grid_names
from probes.core.splits import holdout
from probes.core.torch_runtime import cpu_threads, minibatches, resolve_device

__all__ = ["AttentiveProbe"]


class AttentiveProbe(ClassifierMixin, BaseEstimator):
    """Attention-pooling probe on frozen patch grids (binary labels), scikit-learn style.

    Args:
        grid: ``grid16`` or ``grid32`` (also ``16``, ``32``).
        n_queries: learned queries, each with its own attention and classifier weights. The
            attention and the classifier must find each other (neither has a gradient towards
            a small finding until the other points at it), and a query can settle on the
            wrong sign; a few queries make finding it robust (4: every seed of the planted
            test; 1: some seeds failed).
        lr, weight_decay: AdamW.
        batch_size: images per minibatch (and the most rows one store read asks for).
        max_epochs: passes over the training images.
        early_stopping, patience, min_delta: stop when the validation loss has not improved by
            ``min_delta`` for ``patience`` epochs; the best epoch's weights are kept. The
            validation loss often rises before the attention finds a small finding, hence a
            longer patience than the linear heads'.
        validation_fraction: share of the training images held out for early stopping when
            ``fit`` gets no ``eval_set`` (whole patients when ``groups`` is given).
        standardize: scale tokens per channel (statistics from ``stats_images`` images).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``...
        prefetch: minibatches read ahead by a background thread (0: none).
        num_threads: torch CPU threads while fitting/predicting (``None``: 1, since the CPU step
            runs the two halves of each minibatch on two threads of its own).
        seed: initialisation, shuffling and the held-out split.
        verbose: a progress bar over epochs.

    Fitted attributes: ``pool_`` (the torch module), ``classes_``, ``queries_`` ``(Q, C)`` and
    ``coef_`` ``(Q, C)`` (attention vectors and classifier weights on standardised tokens),
    ``intercept_``, ``mean_``/``scale_`` ``(C,)``, ``grid_shape_`` ``(h, w, C)``,
    ``history_`` (per-epoch losses), ``best_epoch_``, ``n_epochs_``.
    """

    def __init__(
        self,
        grid: str = "grid16",
        n_queries: int = 4,
        lr: float = 1e-2,
        weight_decay: float = 1e-2,
        batch_size: int = 64,
        max_epochs: int = 200,
        early_stopping: bool = True,
        patience: int = 20,
        min_delta: float = 1e-4,
        validation_fraction: float = 0.2,
        standardize: bool = True,
        stats_images: int = 256,
        device: str = "auto",
        prefetch: int = 1,
        num_threads: int | None = None,
        seed: int = 5656,
        verbose: bool = False,
    ):
        self.grid = grid
        self.n_queries = n_queries
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.patience = patience
        self.min_delta = min_delta
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.stats_images = stats_images
        self.device = device
        self.prefetch = prefetch
        self.num_threads = num_threads
        self.seed = seed
        self.verbose = verbose

    # -- plumbing ------------------------------------------------------------------------------

    def _names(self) -> tuple[str, ...]:
        names = grid_names(self.grid)
        if len(names) != 1:
            raise ValueError(
                f"the attentive probe reads one grid (grid16 or grid32), not {self.grid}"
            )
        return names

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        # by default one: the step's two halves are two threads already
        return cpu_threads(self._device(), self.num_threads or 1)

    def _stream(self, grids: GridSource, batches, target: np.ndarray | None = None) -> _Stream:
        """Minibatches ``(rows, target)``: on CPU a list of row tensors that view the store's
        shards; on CUDA one pinned ``(b, h, w, C)`` tensor moved to the device."""
        device = self._device()

        def load(index: np.ndarray):
            if device.type == "cpu":
                rows: Any = [torch.from_numpy(r) for r in grids.read_views(index)[0]]
            else:
                batch = torch.from_numpy(np.ascontiguousarray(grids.read(index)[0]))
                rows = batch.pin_memory().to(device, non_blocking=True)
            y = None if target is None else torch.from_numpy(target[index]).to(device)
            return rows, y

        return _Stream(batches, load, self.prefetch)

    def _batches(self, n: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        return minibatches(n, self.batch_size, rng)

    def _encode(self, y: Any) -> np.ndarray:
        return (np.asarray(y).reshape(-1) == self.classes_[1]).astype(np.float32)

    # -- fitting -------------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        X_val: Any = None,
        y_val: Any = None,
        *,
        groups=None,
        eval_set: tuple[Any, Any] | None = None,
    ):
        """Train on grids ``X`` and binary labels ``y`` ``(n,)``; early-stop on ``(X_val,
        y_val)``, as every probe here takes its validation fold.

        Args:
            X: a FeatureSet, a GridSource, or an ``(n, h, w, C)`` array.
            X_val, y_val: the validation grids and labels (a round's validation fold).
            groups: ``(n,)`` patient ids: hold out whole patients when there is no validation
                set.
            eval_set: ``(X_val, y_val)`` as one pair, the earlier spelling (still accepted).
        """
        if eval_set is not None:
            if X_val is not None or y_val is not None:
                raise ValueError("give X_val/y_val or eval_set, not both")
            X_val, y_val = eval_set
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        eval_set = None if X_val is None else (X_val, y_val)
        with self._threads():
            return self._fit(X, y, eval_set, groups)

    def _fit(self, X: Any, y: Any, eval_set, groups) -> AttentiveProbe:
        names = self._names()
        grids = as_grids(X, names)
        y = np.asarray(y).reshape(-1)
        if len(grids) != len(y):
            raise ValueError(f"{len(grids)} grid rows but {len(y)} labels")
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"y needs exactly two classes, got {self.classes_[:5]}")
        target = self._encode(y)
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        val = None
        if self.early_stopping:
            if eval_set is not None:
                val = (as_grids(eval_set[0], names), self._encode(eval_set[1]))
            else:
                train, held = holdout(len(grids), self.validation_fraction, groups, rng)
                val = (grids.subset(held), target[held])
                grids, target = grids.subset(train), target[train]
        self.grid_shape_ = tuple(int(v) for v in grids.shapes[0])
        pool = AttentionPool(self.grid_shape_[2], self.n_queries, generator)
        if self.standardize:
            self._fit_scaling(pool, grids, rng)
        pool = pool.to(self._device())
        optimizer = torch.optim.AdamW(pool.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        self.history_, best, best_state, waited = [], np.inf, None, 0
        epochs = range(self.max_epochs)
        if self.verbose:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="attentive probe", leave=False)
        for epoch in epochs:
            record = {
                "epoch": epoch,
                "train_loss": self._epoch(pool, optimizer, grids, target, rng),
            }
            if val is not None:
                record["val_loss"] = self._loss(pool, *val)
                if record["val_loss"] < best - self.min_delta:
                    best, waited = record["val_loss"], 0
                    best_state = copy.deepcopy(pool.state_dict())
                    self.best_epoch_ = epoch
                else:
                    waited += 1
            self.history_.append(record)
            if val is not None and waited >= self.patience:
                break
        if best_state is not None:
            pool.load_state_dict(best_state)
        else:
            self.best_epoch_ = len(self.history_) - 1
        self.n_epochs_ = len(self.history_)
        self.pool_ = pool.eval()
        self.queries_ = pool.queries.detach().cpu().numpy()
        self.coef_ = pool.weight.detach().cpu().numpy()
        self.intercept_ = float(pool.bias.detach())
        self.mean_ = pool.mean.cpu().numpy()
        self.scale_ = pool.scale.cpu().numpy()
        return self

    def _epoch(self, pool, optimizer, grids: GridSource, target, rng) -> float:
        """One pass of minibatch steps; returns the mean training loss."""
        pool.train()
        total, count = 0.0, 0
        for rows, y in self._stream(grids, self._batches(len(grids), rng), target):
            optimizer.zero_grad(set_to_none=True)
            loss = batch_step(pool, rows, y)
            optimizer.step()
            total, count = total + float(loss) * len(rows), count + len(rows)
            del rows, y  # freed before the next batch arrives: the peak is fixed
        return total / max(count, 1)

    def _loss(self, pool, grids: GridSource, target: np.ndarray) -> float:
        """Mean binary cross-entropy over a whole set (batch-size independent)."""
        pool.eval()
        total = 0.0
        for rows, y in self._stream(grids, self._batches(len(grids), None), target):
            total += batch_loss(pool, rows, y)
        return total / max(len(grids), 1)

    def _fit_scaling(self, pool: AttentionPool, grids: GridSource, rng) -> None:
        """Per-channel mean and 1/sd from up to ``stats_images`` training images."""
        sample = np.sort(rng.permutation(len(grids))[: self.stats_images])
        channels = self.grid_shape_[2]
        sums = np.zeros(channels)
        squares = np.zeros(channels)
        tokens = 0
        for start in range(0, len(sample), self.batch_size):
            block = grids.read(sample[start : start + self.batch_size])[0]
            flat = block.reshape(-1, channels).astype(np.float32)
            sums += flat.sum(0, dtype=np.float64)
            squares += np.einsum("ij,ij->j", flat, flat, dtype=np.float64)
            tokens += len(flat)
        mean = sums / max(tokens, 1)
        sd = np.sqrt(np.clip(squares / max(tokens, 1) - mean * mean, 0, None))
        pool.mean.copy_(torch.from_numpy(mean).float())
        # a constant channel carries nothing: scale 0 rather than 1/0
        pool.scale.copy_(torch.from_numpy(np.where(sd > 1e-6, 1 / np.maximum(sd, 1e-12), 0.0)))

    # -- prediction ----------------------------------------------------------------------------

    def iter_outputs(
        self, X: Any
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Stream ``(index, logits (b,), attention (b, h, w), contribution (b, h, w))`` per
        minibatch, in row order. Attention is the mean over queries (sums to 1 per image);
        the contribution map sums to the logit minus the bias."""
        check_is_fitted(self, "pool_")
        grids = as_grids(X, self._names())
        h, w, _ = grids.shapes[0]
        batches = self._batches(len(grids), None)
        with self._threads():
            for index, (rows, _) in zip(batches, self._stream(grids, batches), strict=True):
                z, a, c = batch_outputs(self.pool_, rows)
                b = len(index)
                yield (
                    index,
                    z.cpu().numpy().astype(np.float64),
                    a.cpu().numpy().reshape(b, h, w),
                    c.cpu().numpy().reshape(b, h, w),
                )

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(n,)``."""
        return np.concatenate([z for _, z, _, _ in self.iter_outputs(X)])

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, 2)`` class probabilities."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def patch_maps(self, X: Any) -> dict[str, np.ndarray]:
        """``{"attention": (n, h, w), "score": (n, h, w)}``: attention weights (mean over
        queries) and each patch's contribution to the logit."""
        parts = list(self.iter_outputs(X))
        return {
            "attention": np.concatenate([a for _, _, a, _ in parts]),
            "score": np.concatenate([c for _, _, _, c in parts]),
        }
