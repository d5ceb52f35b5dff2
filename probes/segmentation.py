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

Features are standardised per channel (statistics from a bounded sample of training images) by
folding mean and scale into the effective weights, which costs nothing per pixel.

Memory does not grow with N: every pass reads shuffled minibatches of rows (``batch_size`` rows
per ``read_rows`` call, sorted within the batch for locality) while a background thread reads
the next ones; masks are held bit-packed at the training resolution.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import nn

from probes.masks import PackedMasks

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

GRID_CHOICES = {
    "grid16": ("grid16",),
    "grid32": ("grid32",),
    "grid16+grid32": ("grid16", "grid32"),
}
#: The reference study's optimiser and schedule (its linear-probe settings).
REFERENCE_PARAMS = dict(
    lr=1e-4,
    weight_decay=1e-2,
    batch_size=16,
    max_epochs=500,
    patience=5,
    min_delta=1e-4,
    align_corners=True,
    seed=5656,
)
REFERENCE_CLASS_WEIGHTS = {"pneumothorax": (1.0, 5.0), "heart": (1.0, 1.0)}


def grid_names(grid: str) -> tuple[str, ...]:
    """Store arrays for a grid choice: ``16``/``grid16``, ``32``, ``16+32``/``grid16+grid32``."""
    spelled = "+".join(p if p.startswith("grid") else f"grid{p}" for p in str(grid).split("+"))
    if spelled not in GRID_CHOICES:
        raise ValueError(f"grid must be one of {sorted(GRID_CHOICES)} (or 16, 32, 16+32)")
    return GRID_CHOICES[spelled]


class GridSource:
    """Rows of one or more patch grids, read by index: ``read(index) -> [(b, h, w, C), ...]``."""

    names: tuple[str, ...]
    shapes: list[tuple[int, int, int]]

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def subset(self, index: Any) -> GridSource:
        raise NotImplementedError


class StoreGrids(GridSource):
    """Grids of a store group, streamed: one ``group.read_rows`` call per grid and batch.

    Args:
        group: a :class:`~embedcache.store.api.StoreGroup`.
        rows: store rows served, in order (e.g. ``FeatureSet.rows`` or a fold's part of it).
        names: grid arrays, e.g. ``("grid16", "grid32")``.
    """

    def __init__(self, group: Any, rows: Sequence[int] | np.ndarray, names: Sequence[str]):
        self.group, self.names = group, tuple(names)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shapes = [tuple(group.array(n).shape[1:]) for n in self.names]

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        rows = self.rows[index]
        return [self.group.read_rows(name, rows) for name in self.names]

    def subset(self, index: Any) -> StoreGrids:
        return StoreGrids(self.group, self.rows[np.asarray(index, dtype=np.int64)], self.names)


class ArrayGrids(GridSource):
    """In-memory grids (or anything indexable by an integer array, e.g. a memmap)."""

    def __init__(self, *arrays: np.ndarray, names: Sequence[str] | None = None):
        if not arrays or any(a.ndim != 4 or len(a) != len(arrays[0]) for a in arrays):
            raise ValueError("expected one or more (n, h, w, C) arrays of equal length")
        self.arrays = arrays
        self.names = tuple(names or [f"grid{i}" for i in range(len(arrays))])
        self.shapes = [tuple(a.shape[1:]) for a in arrays]

    def __len__(self) -> int:
        return len(self.arrays[0])

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(a[index]) for a in self.arrays]

    def subset(self, index: Any) -> ArrayGrids:
        index = np.asarray(index, dtype=np.int64)
        return ArrayGrids(*(a[index] for a in self.arrays), names=self.names)


def as_grids(X: Any, names: Sequence[str]) -> GridSource:
    """A :class:`GridSource` for X: a GridSource, a FeatureSet (streamed from its store group),
    an ``(n, h, w, C)`` array, or a tuple of arrays (one per grid in ``names``)."""
    if isinstance(X, GridSource):
        source = X
    elif hasattr(X, "group") and hasattr(X, "rows"):  # FeatureSet
        return StoreGrids(X.group, X.rows, names)
    elif isinstance(X, (tuple, list)):
        source = ArrayGrids(*X, names=names)
    else:
        source = ArrayGrids(np.asarray(X), names=names)
    if len(source.shapes) != len(names):
        raise ValueError(f"grid choice {'+'.join(names)} needs {len(names)} grid array(s)")
    return source


def _as_targets(y: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``take(index) -> (b, h, w)`` class labels, from PackedMasks or an ``(n, h, w)`` array."""
    if isinstance(y, PackedMasks):
        return y.take
    y = np.asarray(y)
    if y.ndim != 3:
        raise ValueError(f"masks must be (n, h, w), got shape {y.shape}")
    return lambda index: y[index]


def _mask_shape(y: Any) -> tuple[int, int]:
    return tuple(y.shape) if isinstance(y, PackedMasks) else tuple(np.shape(y)[1:])  # type: ignore[return-value]


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-D linear interpolation, exactly as ``F.interpolate``."""
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # n_in unit signals
    out = F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)
    return out[0].T.contiguous().float()


class _Stream:
    """Batches ``load(index)`` for each index array, read ahead by a background thread."""

    _END = object()

    def __init__(self, batches: list[np.ndarray], load: Callable, prefetch: int):
        self.batches, self.load, self.depth = batches, load, prefetch

    def __iter__(self) -> Iterator[Any]:
        if self.depth <= 0:
            for index in self.batches:
                yield self.load(index)
            return
        slots: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                for index in self.batches:
                    if stop.is_set():
                        return
                    put(self.load(index))
            except BaseException as error:  # handed to the consumer, raised there
                put(_Failure(error))
            finally:
                put(self._END)

        thread = threading.Thread(target=work, name="probe-prefetch", daemon=True)
        thread.start()
        try:
            while (item := slots.get()) is not self._END:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            thread.join()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _LinearGridHead(nn.Module):
    """1x1 convolution on each grid (summed at the first grid's size) + bilinear upsampling."""

    def __init__(self, shapes, n_classes, out_shape, align_corners, generator):
        super().__init__()
        channels = [s[2] for s in shapes]
        bound = 1.0 / np.sqrt(sum(channels))  # nn.Conv2d's default init over the concatenation
        self.weight = nn.ParameterList(
            nn.Parameter((torch.rand(n_classes, c, generator=generator) * 2 - 1) * bound)
            for c in channels
        )
        self.bias = nn.Parameter((torch.rand(n_classes, generator=generator) * 2 - 1) * bound)
        for g, c in enumerate(channels):
            self.register_buffer(f"mean{g}", torch.zeros(c))
            self.register_buffer(f"scale{g}", torch.ones(c))
        base_h, base_w = shapes[0][:2]
        self.n_grids = len(channels)
        for g, (h, w, _) in enumerate(shapes[1:], start=1):
            self.register_buffer(f"rows{g}", interpolation_matrix(h, base_h, align_corners))
            self.register_buffer(f"cols{g}", interpolation_matrix(w, base_w, align_corners))
        self.upsample = tuple(out_shape) != (base_h, base_w)
        self.register_buffer("out_rows", interpolation_matrix(base_h, out_shape[0], align_corners))
        self.register_buffer("out_cols", interpolation_matrix(base_w, out_shape[1], align_corners))

    def effective(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and bias of grid ``g`` on raw (unstandardised) features."""
        weight = self.weight[g] * getattr(self, f"scale{g}")
        return weight, -(weight @ getattr(self, f"mean{g}"))

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """``[(B, h, w, C), ...]`` -> logits ``(B, K, H, W)`` at the mask resolution, float32."""
        total = None
        for g, x in enumerate(grids):
            weight, bias = self.effective(g)
            z = F.linear(x, weight.to(x.dtype), bias.to(x.dtype))  # (B, h, w, K)
            if g:
                rows, cols = getattr(self, f"rows{g}"), getattr(self, f"cols{g}")
                z = torch.einsum("ih,bhwk,jw->bijk", rows.to(z.dtype), z, cols.to(z.dtype))
            total = z if total is None else total + z
        with torch.autocast(total.device.type, enabled=False):
            logits = (total.float() + self.bias).permute(0, 3, 1, 2)
            if self.upsample:
                logits = torch.einsum("ih,bkhw,jw->bkij", self.out_rows, logits, self.out_cols)
        return logits


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
        prefetch: minibatches read ahead by a background thread (0 = none).
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
        prefetch: int = 2,
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
        self.seed = seed
        self.verbose = verbose

    # -- plumbing ------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        if self.device in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _stream(self, grids: GridSource, batches, targets=None) -> _Stream:
        device = self._device()
        cuda = device.type == "cuda"

        def load(index: np.ndarray):
            xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in grids.read(index)]
            # fp16 -> fp32 here, in the reading thread, on CPU; on CUDA the storage dtype
            # travels (half the bytes) and is converted on the device.
            xs = [x.pin_memory() if cuda else x.float() for x in xs]
            t = None if targets is None else torch.from_numpy(np.asarray(targets(index), np.uint8))
            return xs, t

        return _Stream(batches, load, self.prefetch)

    def _to_device(self, xs, t):
        device = self._device()
        xs = [x.to(device, non_blocking=True).float() for x in xs]
        return xs, (None if t is None else t.to(device, non_blocking=True).long())

    def _autocast(self):
        device = self._device()
        return torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda"
        )

    def _batches(self, n: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        order = np.arange(n) if rng is None else rng.permutation(n)
        # Sorting within a batch keeps its composition (the gradient) and reads in store order.
        return [np.sort(order[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]

    def _loss_parts(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor):
        """(weighted NLL sum, weight sum, soft-Dice intersections, soft-Dice denominators)."""
        nll = F.cross_entropy(logits, target, weight=weights, reduction="sum")
        wsum = weights[target].sum()
        if not self.dice_weight:
            return nll, wsum, None, None
        prob = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(target, self.n_classes).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
        return nll, wsum, (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))

    def _loss(self, nll, wsum, inter, denom) -> torch.Tensor:
        loss = nll / wsum.clamp_min(1e-12)
        if self.dice_weight:
            loss = loss + self.dice_weight * (1 - ((2 * inter + 1) / (denom + 1)).mean())
        return loss

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None, groups=None):
        """Train on grids X and masks y.

        Args:
            X: a FeatureSet (streamed from its store), a :class:`GridSource`, an ``(n, h, w, C)``
                array, or a tuple of arrays for ``grid16+grid32``.
            y: :class:`~probes.masks.PackedMasks` or an ``(n, H, W)`` label array; ``(H, W)``
                is the resolution logits are upsampled to and scored at.
            eval_set: ``(X_val, y_val)`` for early stopping (the reference's validation fold).
            groups: ``(n,)`` patient ids, to hold out whole patients when no eval_set is given.
        """
        names = grid_names(self.grid)
        grids, take = as_grids(X, names), _as_targets(y)
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
                val = (as_grids(eval_set[0], names), _as_targets(eval_set[1]), len(eval_set[1]))
            else:
                train_index, val_index = _holdout(len(grids), self.validation_fraction, groups, rng)
                val = (grids.subset(val_index), _subset_take(take, val_index), len(val_index))
                grids, take = grids.subset(train_index), _subset_take(take, train_index)

        self.mask_shape_ = _mask_shape(y)
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
            for xs, t in self._stream(grids, self._batches(len(grids), rng), take):
                xs, t = self._to_device(xs, t)
                with self._autocast():
                    loss = self._loss(*self._loss_parts(head(xs), t, class_weights))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.detach() * len(t), count + len(t)
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
            xs, _ = self._to_device(xs, None)
            for g, x in enumerate(xs):
                flat = x.reshape(-1, x.shape[-1])
                # float32 partial sums per batch, float64 across batches; no squared copy.
                sums[g] += flat.sum(0).double().cpu()
                squares[g] += (torch.linalg.vector_norm(flat, dim=0).double() ** 2).cpu()
                pixels[g] += len(flat)
        for g in range(len(sums)):
            mean = sums[g] / max(pixels[g], 1)
            sd = (squares[g] / max(pixels[g], 1) - mean * mean).clamp_min(0).sqrt()
            getattr(head, f"mean{g}").copy_(mean.float())
            # A constant channel carries nothing: scale 0 rather than 1/0.
            getattr(head, f"scale{g}").copy_(torch.where(sd > 1e-6, 1 / sd, 0).float())

    @torch.no_grad()
    def _eval_loss(self, head, val, class_weights) -> float:
        head.eval()
        grids, take, n = val
        sums = None
        for xs, t in self._stream(grids, self._batches(n, None), take):
            xs, t = self._to_device(xs, t)
            with self._autocast():
                parts = self._loss_parts(head(xs), t, class_weights)
            sums = (
                parts
                if sums is None
                else [a if a is None else a + b for a, b in zip(sums, parts, strict=True)]
            )
        return float(self._loss(*sums)) if sums is not None else float("nan")

    # -- prediction ----------------------------------------------------------------------------

    @torch.no_grad()
    def iter_predict(
        self, X: Any, *, proba: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream predictions: ``(index, labels (b, H, W) uint8)`` per minibatch, in row order
        (``(index, probabilities (b, K, H, W) float32)`` with ``proba=True``)."""
        grids = as_grids(X, grid_names(self.grid))
        head, batches = self.head_, self._batches(len(grids), None)
        for index, (xs, _) in zip(batches, self._stream(grids, batches), strict=True):
            xs, _ = self._to_device(xs, None)
            with self._autocast():
                logits = head(xs)
            out = logits.softmax(1) if proba else logits.argmax(1).to(torch.uint8)
            yield index, out.cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, K, H, W)`` float32 at the mask resolution."""
        return np.concatenate([p for _, p in self.iter_predict(X, proba=True)])

    def predict(self, X: Any) -> np.ndarray:
        """Argmax labels ``(n, H, W)`` uint8 at the mask resolution."""
        return np.concatenate([p for _, p in self.iter_predict(X)])

    def score(self, X: Any, y: Any) -> float:
        """Mean per-image Dice of the foreground (labels > 0); both-empty images count 1."""
        from probes.seg_metrics import confusion_counts, dice_iou_from_counts

        take, counts = _as_targets(y), []
        for index, labels in self.iter_predict(X):
            counts.append(np.stack(confusion_counts(labels > 0, take(index) > 0)))
        return float(np.nanmean(dice_iou_from_counts(*np.concatenate(counts, 1))[0]))


def _subset_take(take: Callable, index: np.ndarray) -> Callable:
    return lambda i: take(index[i])


def _holdout(n: int, fraction: float, groups, rng) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices; whole groups go to validation when groups are given."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction}")
    if groups is None:
        order = rng.permutation(n)
        n_val = max(1, int(round(fraction * n)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    unique = rng.permutation(np.unique(groups))
    n_val = max(1, int(round(fraction * len(unique))))
    is_val = np.isin(groups, unique[:n_val])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
