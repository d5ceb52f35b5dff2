"""Linear segmentation probe on cached patch grids, trained on minibatches streamed from a store.

The reference study's head: a 1x1 convolution (C -> n_classes) on the frozen patch grid, bilinear
upsampling of the logits to the mask resolution, class-weighted cross-entropy, AdamW, early
stopping on validation loss. Two exact rewrites make it cheap and deterministic:

- Bilinear upsampling is a linear map along each axis, so it is applied as two small matrix
  products (``A_h @ logits @ A_w.T``) built from ``F.interpolate`` itself: the same numbers, and
  no atomics in the backward pass (CUDA's bilinear backward is not deterministic).
- A 1x1 convolution commutes with bilinear resampling, so ``grid16+grid32`` (grid32 upsampled to
  grid16's size and concatenated along channels) is computed as ``conv16(grid16) +
  up(conv32(grid32))``: the grid32 features are never resampled, only their logits.

- With two classes the softmax depends only on the logit difference ``d = z1 - z0``, so the
  head computes ``d`` (one output row: half the upsampling, and matrix-vector products) and the
  loss is ``w_y * softplus((1 - 2y) d)``: the numbers of weighted cross-entropy on two logits.

Features are standardised per channel (statistics from a bounded sample of training images) by
folding mean and scale into the effective weights, which costs nothing per pixel.

Memory does not grow with N: every pass reads shuffled minibatches of rows (``batch_size`` rows,
sorted within the batch for locality) while a background thread reads the next ones and prepares
their targets; masks are held bit-packed at the training resolution. Grids travel in their
storage dtype: on CPU the common case (two classes, one grid, no Dice) takes the rows as views
of the memory-mapped shards and the hand-fused step of :mod:`probes.segmentation.step` converts each once
in cache; otherwise float16 is converted chunk by chunk inside the products (never a float32
copy of the batch), and on CUDA after the transfer, under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

from probes.core.grids import (
    GRID_CHOICES,
    ArrayGrids,
    GridSource,
    StoreGrids,
    _Stream,
    as_grids,
    grid_names,
)
from probes.core.splits import holdout
from probes.core.torch_runtime import cpu_threads, minibatches, resolve_device
from probes.linear.backends.sgd_head import REFERENCE as REFERENCE_HEAD
from probes.segmentation.head import (  # noqa: F401 (interpolation_matrix: re-exported)
    CHUNK_PIXELS,
    _ChunkedLinear,
    _LinearGridHead,
    interpolation_matrix,
)
from probes.segmentation.loss import combine_loss, loss_parts, loss_targets
from probes.segmentation.masks import mask_reader, mask_shape
from probes.segmentation.step import fused_binary_nll, fused_binary_scores, fused_binary_step

__all__ = [
    "GRID_CHOICES",
    "REFERENCE_CLASS_WEIGHTS",
    "REFERENCE_PARAMS",
    "ArrayGrids",
    "GridSource",
    "SegmentationProbe",
    "StoreGrids",
    "as_grids",
    "grid_names",
]

#: The reference study's optimiser and schedule: its linear-probe settings (lr 1e-4, weight decay
#: 1e-2, batch 16, up to 500 epochs, patience 5, min delta 1e-4, seed 5656), without gradient
#: clipping, with ``align_corners=True`` upsampling.
REFERENCE_PARAMS = {
    **{k: v for k, v in REFERENCE_HEAD.items() if k != "grad_clip"},
    "align_corners": True,
}
REFERENCE_CLASS_WEIGHTS = {"pneumothorax": (1.0, 5.0), "heart": (1.0, 1.0)}


class SegmentationProbe(BaseEstimator):
    """Linear (1x1 conv) segmentation probe on frozen patch grids, scikit-learn style.

    Args:
        grid: ``grid16``, ``grid32`` or ``grid16+grid32`` (also ``16``, ``32``, ``16+32``).
        n_classes: output classes; masks hold labels ``0 .. n_classes - 1``.
        class_weights: cross-entropy class weights (reference: ``(1, 5)`` pneumothorax,
            ``(1, 1)`` heart); ``None`` = equal.
        dice_weight: weight of a soft-Dice loss term on the foreground classes (0 = off).
        lr, weight_decay: AdamW.
        batch_size: images per minibatch (and the most rows one store read asks for).
        max_epochs: passes over the training images.
        early_stopping: stop when the validation loss has not improved by ``min_delta`` for
            ``patience`` epochs and restore the best epoch's weights.
        validation_fraction: share of the training images held out for early stopping when
            ``fit`` gets no ``eval_set`` (grouped by ``groups`` when given).
        align_corners: bilinear upsampling convention (the reference used True).
        standardize: scale features per channel (statistics from ``stats_images`` images).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ...
        amp: bf16 autocast on CUDA.
        prefetch: minibatches read ahead by a background thread (0 = none). One hides the
            reads when a core is free for it; each more holds one more batch in memory.
        num_threads: torch CPU threads while fitting and predicting; ``None`` leaves one core
            to the reading thread (the CPU probe is memory-bound, and an oversubscribed core
            stalls torch's thread pool).
        seed: shuffling, validation split and initialisation.
        verbose: progress bar over epochs.

    Fitted attributes: ``head_``, ``coef_`` ``(K, C)`` and ``intercept_`` ``(K,)`` on raw
    features (grids' channels concatenated in ``grid`` order), ``mask_shape_``,
    ``grid_shapes_``, ``history_`` (per-epoch losses), ``best_epoch_``, ``n_epochs_``.
    """

    def __init__(
        self,
        grid: str = "grid16",
        n_classes: int = 2,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 50,
        early_stopping: bool = True,
        patience: int = 5,
        min_delta: float = 1e-4,
        validation_fraction: float = 0.2,
        align_corners: bool = True,
        standardize: bool = True,
        stats_images: int = 256,
        device: str = "auto",
        amp: bool = True,
        prefetch: int = 1,
        num_threads: int | None = None,
        seed: int = 5656,
        verbose: bool = False,
    ):
        self.grid = grid
        self.n_classes = n_classes
        self.class_weights = class_weights
        self.dice_weight = dice_weight
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.patience = patience
        self.min_delta = min_delta
        self.validation_fraction = validation_fraction
        self.align_corners = align_corners
        self.standardize = standardize
        self.stats_images = stats_images
        self.device = device
        self.amp = amp
        self.prefetch = prefetch
        self.num_threads = num_threads
        self.seed = seed
        self.verbose = verbose

    # -- plumbing ------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        """Set torch's CPU thread count for the duration of a fit or a prediction: by default
        the cores less one for the read-ahead thread."""
        wanted = self.num_threads
        if wanted is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            wanted = min(
                torch.get_num_threads(),
                max(1, (cores or os.cpu_count() or 1) - (self.prefetch > 0)),
            )
        return cpu_threads(self._device(), wanted)

    def _stream(
        self, grids: GridSource, batches, targets=None, views: bool = False, compact: bool = False
    ) -> _Stream:
        """Minibatches ``(xs, targets)``: per grid a ``(b, h, w, C)`` tensor, or with ``views``
        a list of ``b`` row tensors that are views of the store's memory-mapped shards (the
        fused CPU step converts each row once; nothing copies the batch before that)."""
        device = self._device()
        cuda = device.type == "cuda"

        def load(index: np.ndarray):
            if views:
                xs = [[torch.from_numpy(row) for row in rows] for rows in grids.read_views(index)]
            else:
                xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in grids.read(index)]
            # The storage dtype travels as is (half the bytes for float16): converted chunk by
            # chunk on CPU (_ChunkedLinear), on the device on CUDA.
            if cuda:
                xs = [x.pin_memory() for x in xs]
            if targets is None:
                return xs, None
            return xs, self._targets(np.asarray(targets(index)), compact)

        return _Stream(batches, load, self.prefetch)

    def _targets(self, labels: np.ndarray, compact: bool = False) -> dict[str, torch.Tensor]:
        return loss_targets(labels, self.n_classes, self.class_weights, compact)

    def _to_device(self, xs, targets=None):
        device = self._device()
        moved = [x if isinstance(x, list) else x.to(device, non_blocking=True) for x in xs]
        if targets is not None:
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        return moved, targets

    def _train_step(self, head, optimizer, xs, targets, class_weights) -> torch.Tensor:
        """One optimiser step on a minibatch; returns its loss."""
        if self._fused(head.n_grids):
            optimizer.zero_grad(set_to_none=True)
            loss = fused_binary_step(head, xs[0], targets, class_weights)
            optimizer.step()
            return loss
        with self._autocast():
            nll, inter, denom = self._loss_parts(head(xs), targets)
        loss = self._loss(nll, targets["counts"] @ class_weights, inter, denom)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def _scores(self, head, xs) -> torch.Tensor:
        """The head's scores; rows streamed as views go through the fused CPU forward."""
        if isinstance(xs[0], list):
            return fused_binary_scores(head, xs[0])
        return head(xs)

    def _fused(self, n_grids: int) -> bool:
        """Whether training steps take the hand-fused CPU path (:mod:`probes.segmentation.step`)."""
        cpu = self._device().type == "cpu"
        return cpu and self.n_classes == 2 and n_grids == 1 and not self.dice_weight

    def _autocast(self):
        device = self._device()
        return torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda"
        )

    def _batches(self, n: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        return minibatches(n, self.batch_size, rng)

    def _loss_parts(self, scores: torch.Tensor, targets: dict[str, torch.Tensor]):
        return loss_parts(scores, targets, self.n_classes, self.class_weights, self.dice_weight)

    def _loss(self, nll, wsum, inter, denom) -> torch.Tensor:
        return combine_loss(nll, wsum, inter, denom, self.dice_weight)

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
        """Train on grids X and masks y; early-stop on ``(X_val, y_val)``, as every probe here
        takes its validation fold (:class:`~probes.linear.probe.LinearProbe` too).

        Args:
            X: a FeatureSet (streamed from its store), a :class:`GridSource`, an ``(n, h, w, C)``
                array, or a tuple of arrays for ``grid16+grid32``.
            y: :class:`~probes.segmentation.masks.PackedMasks` or an ``(n, H, W)`` label array;
                ``(H, W)`` is the resolution logits are upsampled to and scored at.
            X_val, y_val: the validation grids and masks for early stopping (the reference's
                validation fold), of the kinds X and y take.
            groups: ``(n,)`` patient ids, to hold out whole patients when no validation set is
                given.
            eval_set: ``(X_val, y_val)`` as one pair, the earlier spelling (still accepted).
        """
        if eval_set is not None:
            if X_val is not None or y_val is not None:
                raise ValueError("give X_val/y_val or eval_set, not both")
            X_val, y_val = eval_set
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        with self._threads():
            return self._fit(X, y, None if X_val is None else (X_val, y_val), groups)

    def _fit(self, X: Any, y: Any, eval_set, groups) -> SegmentationProbe:
        names = grid_names(self.grid)
        grids, take = as_grids(X, names), mask_reader(y)
        if len(grids) != len(y):
            raise ValueError(f"{len(grids)} grid rows but {len(y)} masks")
        weights = self.class_weights or [1.0] * self.n_classes
        if len(weights) != self.n_classes:
            raise ValueError(
                f"class_weights has {len(weights)} entries for {self.n_classes} classes"
            )
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        device = self._device()

        train_index = np.arange(len(grids))
        val = None
        if self.early_stopping:
            if eval_set is not None:
                val = (as_grids(eval_set[0], names), mask_reader(eval_set[1]), len(eval_set[1]))
            else:
                train_index, val_index = holdout(len(grids), self.validation_fraction, groups, rng)
                val = (grids.subset(val_index), _subset_take(take, val_index), len(val_index))
                grids, take = grids.subset(train_index), _subset_take(take, train_index)

        self.mask_shape_ = mask_shape(y)
        self.grid_shapes_ = list(grids.shapes)
        head = _LinearGridHead(
            grids.shapes, self.n_classes, self.mask_shape_, self.align_corners, generator
        )
        if self.standardize:
            self._fit_scaling(head, grids, rng)
        head = head.to(device)
        class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        self.history_, best, best_state, waited = [], np.inf, None, 0
        epochs = range(self.max_epochs)
        if self.verbose:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="segmentation probe", leave=False)
        for epoch in epochs:
            head.train()
            total, count = 0.0, 0
            batches = self._batches(len(grids), rng)
            fused = self._fused(head.n_grids)  # (the fused step takes compact uint8 masks)
            for batch in self._stream(grids, batches, take, views=fused, compact=fused):
                xs, targets = self._to_device(*batch)
                loss = self._train_step(head, optimizer, xs, targets, class_weights)
                total, count = total + loss * len(xs[0]), count + len(xs[0])
                del batch, xs, targets  # freed before the next one arrives: peak is fixed
            record = {"epoch": epoch, "train_loss": float(total) / max(count, 1)}
            if val is not None:
                record["val_loss"] = self._eval_loss(head, val, class_weights)
                if record["val_loss"] < best - self.min_delta:
                    best, waited = record["val_loss"], 0
                    best_state = copy.deepcopy(head.state_dict())
                    self.best_epoch_ = epoch
                else:
                    waited += 1
            self.history_.append(record)
            if val is not None and waited >= self.patience:
                break
        if best_state is not None:
            head.load_state_dict(best_state)
        else:
            self.best_epoch_ = len(self.history_) - 1
        self.n_epochs_ = len(self.history_)
        self.head_ = head.eval()
        with torch.no_grad():
            parts = [head.effective(g) for g in range(head.n_grids)]
            self.coef_ = torch.cat([w for w, _ in parts], 1).cpu().numpy()
            self.intercept_ = (sum(b for _, b in parts) + head.bias).cpu().numpy()
        return self

    def _fit_scaling(self, head: _LinearGridHead, grids: GridSource, rng) -> None:
        """Per-channel mean and 1/sd from up to ``stats_images`` training images (streamed)."""
        sample = np.sort(rng.permutation(len(grids))[: self.stats_images])
        batches = [sample[i : i + self.batch_size] for i in range(0, len(sample), self.batch_size)]
        sums = [torch.zeros(s[2], dtype=torch.float64) for s in grids.shapes]
        squares = [torch.zeros_like(s) for s in sums]
        pixels = [0] * len(sums)
        for xs, _ in self._stream(grids, batches):
            xs, _ = self._to_device(xs)
            for g, x in enumerate(xs):
                flat = x.reshape(-1, x.shape[-1])
                cpu = flat.device.type == "cpu"
                # float32 partial sums per chunk, float64 across chunks; no squared copy.
                parts = _ChunkedLinear._chunks(flat, CHUNK_PIXELS) if cpu else [(0, flat.float())]
                for _, part in parts:
                    sums[g] += part.sum(0).double().cpu()
                    squares[g] += (torch.linalg.vector_norm(part, dim=0).double() ** 2).cpu()
                pixels[g] += len(flat)
        for g in range(len(sums)):
            mean = sums[g] / max(pixels[g], 1)
            sd = (squares[g] / max(pixels[g], 1) - mean * mean).clamp_min(0).sqrt()
            getattr(head, f"mean{g}").copy_(mean.float())
            # A constant channel carries nothing: scale 0 rather than 1/0.
            getattr(head, f"scale{g}").copy_(torch.where(sd > 1e-6, 1 / sd, 0).float())

    @torch.no_grad()
    def _eval_loss(self, head, val, class_weights) -> float:
        """The training loss over a whole validation set (pooled, so batch-size independent)."""
        head.eval()
        grids, take, n = val
        nll = wsum = inter = denom = 0.0
        fused = self._fused(head.n_grids)  # (the loss without scores at the mask resolution)
        for batch in self._stream(grids, self._batches(n, None), take, views=fused, compact=fused):
            xs, targets = self._to_device(*batch)
            if fused:
                parts = (fused_binary_nll(head, xs[0], targets),)
            else:
                with self._autocast():
                    parts = self._loss_parts(self._scores(head, xs), targets)
            nll, wsum = nll + parts[0], wsum + targets["counts"] @ class_weights
            if self.dice_weight:
                inter, denom = inter + parts[1], denom + parts[2]
            del batch, xs, targets
        return float(self._loss(nll, wsum, inter, denom)) if n else float("nan")

    # -- prediction ----------------------------------------------------------------------------

    @torch.no_grad()
    def iter_predict(
        self, X: Any, *, proba: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream predictions: ``(index, labels (b, H, W) uint8)`` per minibatch, in row order
        (``(index, probabilities (b, K, H, W) float32)`` with ``proba=True``)."""
        grids = as_grids(X, grid_names(self.grid))
        head, batches = self.head_, self._batches(len(grids), None)
        stream = self._stream(grids, batches, views=self._fused(head.n_grids))
        with self._threads():
            for index, (xs, _) in zip(batches, stream, strict=True):
                xs, _ = self._to_device(xs)
                with self._autocast():
                    scores = self._scores(head, xs)
                if not head.binary:
                    out = scores.softmax(1) if proba else scores.argmax(1).to(torch.uint8)
                elif proba:  # the score is the logit difference d: p1 = sigmoid(d)
                    out = torch.cat([torch.sigmoid(-scores), torch.sigmoid(scores)], 1)
                else:
                    out = (scores[:, 0] > 0).to(torch.uint8)
                del xs
                yield index, out.cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, K, H, W)`` float32 at the mask resolution."""
        return np.concatenate([p for _, p in self.iter_predict(X, proba=True)])

    def predict(self, X: Any) -> np.ndarray:
        """Argmax labels ``(n, H, W)`` uint8 at the mask resolution."""
        return np.concatenate([p for _, p in self.iter_predict(X)])

    def score(self, X: Any, y: Any) -> float:
        """Mean per-image Dice of the foreground (labels > 0); both-empty images count 1."""
        from probes.segmentation.metrics import confusion_counts, dice_iou_from_counts

        take, counts = mask_reader(y), []
        for index, labels in self.iter_predict(X):
            counts.append(np.stack(confusion_counts(labels > 0, take(index) > 0)))
        return float(np.nanmean(dice_iou_from_counts(*np.concatenate(counts, 1))[0]))


def _subset_take(take: Callable, index: np.ndarray) -> Callable:
    return lambda i: take(index[i])
