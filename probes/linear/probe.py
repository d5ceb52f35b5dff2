"""Linear probes on frozen global features, as scikit-learn estimators.

``LinearProbe``: standardisation + L2 logistic regression, C chosen on a validation set or by
inner cross-validation over a log grid, solved by one of several backends (probes.linear.backends).
``SGDHeadProbe``: the reference study's head (one linear layer, AdamW, early stopping).

Both take ``y`` of shape ``(n,)`` (two classes) or ``(n, k)`` (k binary label columns, one model
each, sharing the standardisation); both work in ``Pipeline`` and ``cross_val_score``::

    probe = LinearProbe().fit(X_train, y_train, X_val=X_val, y_val=y_val)
    probe.C_, probe.predict_proba(X_test)[:, 1]
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from probes.core.metrics import auroc
from probes.linear.backends import get_backend, resolve_backend
from probes.linear.backends.sgd_head import REFERENCE, train_head

__all__ = ["DEFAULT_CS", "LinearProbe", "SGDHeadProbe"]

#: Default C grid: 10 values from strong (1e-4) to weak (1e2) regularisation.
DEFAULT_CS = np.logspace(-4, 2, 10)
SCORINGS = ("roc_auc", "neg_log_loss")


class _BinaryProbe(ClassifierMixin, BaseEstimator):
    """Label handling and prediction shared by the probes (binary or multilabel 0/1)."""

    def _encode_labels(self, y) -> np.ndarray:
        """Set ``classes_``/``multilabel_``; return ``(n, k)`` int labels in {0, 1}."""
        y = np.asarray(y)
        kind = type_of_target(y)
        if y.ndim == 2 and y.shape[1] > 1:
            if kind != "multilabel-indicator":
                raise ValueError(
                    f"2-D y must hold 0/1 indicators per label column (got {kind}); "
                    "fit one probe per multi-class column instead"
                )
            self.multilabel_ = True
            self.classes_ = [np.array([0, 1])] * y.shape[1]
            return y.astype(np.int64)
        y = y.reshape(-1)
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(f"y needs exactly two classes for a binary probe, got {classes[:5]}")
        self.multilabel_ = False
        self.classes_ = classes
        return (y == classes[1]).astype(np.int64)[:, None]

    def _labels_like_fit(self, y) -> np.ndarray:
        y = np.asarray(y)
        if self.multilabel_:
            return y.reshape(len(y), -1).astype(np.int64)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(f"y_val holds classes {unknown[:5]} not seen in y")
        return (y.reshape(-1) == self.classes_[1]).astype(np.int64)[:, None]

    def _train_and_validation(self, X, y, X_val, y_val, dtype: list) -> tuple:
        """``(X, Y, X_val, Y_val)`` for a probe that early-stops: the given validation rows, or
        (without them) a stratified held-out share ``val_fraction`` of ``X`` (seeded by
        ``random_state``); labels encoded as :meth:`_encode_labels`."""
        X = validate_data(self, _to_host(X), dtype=dtype)
        Y = self._encode_labels(y)
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        if X_val is not None:
            X_val = validate_data(self, _to_host(X_val), reset=False, dtype=dtype)
            return X, Y, X_val, self._labels_like_fit(y_val)
        strata = np.unique(Y, axis=0, return_inverse=True)[1].reshape(-1)
        n_splits = max(2, round(1 / self.val_fraction))
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
        train, val = next(splitter.split(X, strata))
        return X[train], Y[train], X[val], Y[val]

    def decision_function(self, X) -> np.ndarray:
        """Logits, ``(n,)`` for one label, ``(n, k)`` for k label columns."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        z = np.asarray(X, np.float64) @ self.coef_.T + self.intercept_
        return z if self.multilabel_ else z[:, 0]

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 2)`` class probabilities for one label; ``(n, k)`` P(label = 1) for k labels."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return p if self.multilabel_ else np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        z = self.decision_function(X)
        return (z > 0).astype(np.int64) if self.multilabel_ else self.classes_[(z > 0).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags


class LinearProbe(_BinaryProbe):
    """Standardised L2 logistic regression with C selection; several solver backends.

    Args:
        C: fixed inverse regularisation strength; ``None`` selects one from ``Cs``.
        Cs: C grid (array) or a count (``np.logspace(-4, 4, Cs)``, as LogisticRegressionCV);
            default :data:`DEFAULT_CS`.
        cv: inner folds for choosing C when ``fit`` gets no validation set (grouped by
            ``groups`` when given, e.g. patient ids).
        scoring: ``roc_auc`` or ``neg_log_loss`` on the validation rows.
        backend: ``auto``, ``numpy``, ``torch``, ``sklearn`` or ``cuml`` (probes.linear.backends).
        dtype: ``float32`` or ``float64`` for the solver's data passes; ``None``: float64 for
            ``sklearn``, float32 otherwise.
        device: ``cpu``, ``cuda``... for ``torch``; ``None`` picks CUDA when available.
        tol: gradient inf-norm at convergence (scikit-learn's meaning). max_iter: per C.
        precondition: whiten the solver's coordinates (``auto``: when d <= 4096).
        blas_threads: BLAS threads while the numpy/sklearn backends solve; ``None`` leaves the
            library's setting. 1 (default) was fastest on two cores: the solver is bound by
            matrix-vector products, which two threads slowed 2-7x here. Raise it on a large
            machine with many rows.
        random_state: seed of the inner CV shuffle.

    Attributes:
        coef_: ``(k, d)`` in the original feature units. intercept_: ``(k,)``.
        C_: ``(k,)`` chosen C per label. Cs_: ``(m,)`` grid. scores_: ``(k, m)`` validation
        score per C (mean over inner folds). n_iter_: L-BFGS iterations per label and C (after
        inner CV: of the refit, up to the chosen C). mean_, scale_: ``(d,)``
        standardisation. backend_: the backend that ran. classes_, multilabel_.
    """

    def __init__(
        self,
        C: float | None = None,
        Cs=None,
        cv: int = 5,
        scoring: str = "roc_auc",
        backend: str = "auto",
        dtype: str | None = None,
        device: str | None = None,
        tol: float = 1e-4,
        max_iter: int = 1000,
        precondition: bool | str = "auto",
        blas_threads: int | None = 1,
        random_state: int | None = 0,
    ):
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.scoring = scoring
        self.backend = backend
        self.dtype = dtype
        self.device = device
        self.tol = tol
        self.max_iter = max_iter
        self.precondition = precondition
        self.blas_threads = blas_threads
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None, groups=None) -> LinearProbe:
        """Fit on ``X`` (n, d); choose C on ``(X_val, y_val)`` if given, else by inner CV.

        With a validation set the returned model is the one trained on ``X`` at the chosen C
        (the validation rows never enter the weights); with inner CV it is refit on all of X.
        """
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        gpu_data = _is_gpu_array(X)
        X = validate_data(self, _to_host(X), dtype=[np.float64, np.float32])
        Y = self._encode_labels(y)
        self.backend_ = resolve_backend(self.backend, gpu_data=gpu_data, device=self.device)
        self.Cs_ = self._grid()
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        scaler = _Standardizer(X)
        if X_val is not None:
            Xv = validate_data(self, _to_host(X_val), reset=False, dtype=[np.float64, np.float32])
            paths = self._paths(scaler(X), Y)
            self.scores_ = self._score(paths, scaler(Xv), self._labels_like_fit(y_val))
            best = self._best()
        elif len(self.Cs_) == 1:
            paths = self._paths(scaler(X), Y)
            self.scores_, best = np.zeros((Y.shape[1], 1)), np.zeros(Y.shape[1], dtype=int)
        else:
            self.scores_ = self._cross_validate(X, Y, groups)
            best = self._best()
            paths = self._paths(scaler(X), Y, self.Cs_[: best.max() + 1])
        coef = np.array([path.coef[j] for path, j in zip(paths, best, strict=True)])
        intercept = np.array([path.intercept[j] for path, j in zip(paths, best, strict=True)])
        self.mean_, self.scale_ = scaler.mean, scaler.scale
        self.coef_ = coef / self.scale_
        self.intercept_ = intercept - self.coef_ @ self.mean_
        self.C_ = self.Cs_[best]
        self.n_iter_ = np.array([path.n_iter for path in paths])
        return self

    def _grid(self) -> np.ndarray:
        if self.C is not None:
            return np.array([float(self.C)])
        if self.Cs is None:
            return DEFAULT_CS.copy()
        if np.isscalar(self.Cs):
            return np.logspace(-4, 4, int(self.Cs))
        grid = np.sort(np.asarray(self.Cs, dtype=np.float64))
        if grid.size == 0 or np.any(grid <= 0):
            raise ValueError("Cs must be positive")
        return grid

    def _paths(self, Xs: np.ndarray, Y: np.ndarray, Cs: np.ndarray | None = None):
        fit_paths = get_backend(self.backend_)
        dtype = self.dtype or ("float64" if self.backend_ == "sklearn" else "float32")
        precondition = self.precondition
        if precondition == "auto":
            precondition = Xs.shape[1] <= 4096
        threads = self.blas_threads if self.backend_ in ("numpy", "sklearn") else None
        with nullcontext() if threads is None else threadpool_limits(threads, user_api="blas"):
            return fit_paths(
                Xs,
                Y,
                self.Cs_ if Cs is None else Cs,
                dtype=dtype,
                device=self.device,
                tol=self.tol,
                max_iter=self.max_iter,
                precondition=bool(precondition),
            )

    def _score(self, paths, Xv: np.ndarray, Yv: np.ndarray) -> np.ndarray:
        """``(k, m)`` validation score of each label's model at each C.

        AUROC is undefined on validation rows of one class; such a label is scored by
        negative log loss instead (small cohorts, rare labels).
        """
        scores = np.empty((len(paths), len(self.Cs_)))
        for i, path in enumerate(paths):
            z = Xv @ path.coef.T + path.intercept  # (n_val, m)
            y = Yv[:, i]
            if self.scoring == "roc_auc" and 0 < y.sum() < len(y):
                scores[i] = [auroc(y, z[:, j]) for j in range(z.shape[1])]
            else:
                for j in range(z.shape[1]):
                    p = 1.0 / (1.0 + np.exp(-z[:, j]))
                    scores[i, j] = -log_loss(y, p, labels=[0, 1])
        return scores

    def _cross_validate(self, X: np.ndarray, Y: np.ndarray, groups) -> np.ndarray:
        strata = np.unique(Y, axis=0, return_inverse=True)[1].reshape(-1)
        if groups is None:
            splitter = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        else:
            splitter = StratifiedGroupKFold(self.cv, shuffle=True, random_state=self.random_state)
        per_fold = []
        for train, val in splitter.split(X, strata, groups):
            scaler = _Standardizer(X[train])
            paths = self._paths(scaler(X[train]), Y[train])
            per_fold.append(self._score(paths, scaler(X[val]), Y[val]))
        self.cv_scores_ = np.stack(per_fold, axis=1)  # (k, folds, m)
        return self.cv_scores_.mean(axis=1)

    def _best(self) -> np.ndarray:
        """Index of the best C per label; ties go to the stronger regularisation."""
        return np.argmax(self.scores_, axis=1)


class SGDHeadProbe(_BinaryProbe):
    """The reference study's linear head (see probes.linear.backends.sgd_head), as an estimator.

    Args:
        lr, weight_decay, batch_size, max_epochs, patience, min_delta, grad_clip: the
            reference values by default. standardize: standardise features first (the study
            did not). val_fraction: share of ``X`` held out (stratified, seeded) for early
            stopping when ``fit`` gets no validation set. device: torch device.
        random_state: seed of the initialisation, the batch order and the held-out split.

    Attributes:
        coef_: ``(k, d)`` in original feature units. intercept_: ``(k,)``.
        best_epoch_: epoch whose weights were kept (one head serves all k labels).
        val_loss_: ``(epochs run,)`` validation loss per epoch.
    """

    def __init__(
        self,
        lr: float = REFERENCE["lr"],
        weight_decay: float = REFERENCE["weight_decay"],
        batch_size: int = REFERENCE["batch_size"],
        max_epochs: int = REFERENCE["max_epochs"],
        patience: int = REFERENCE["patience"],
        min_delta: float = REFERENCE["min_delta"],
        grad_clip: float = REFERENCE["grad_clip"],
        standardize: bool = False,
        val_fraction: float = 0.2,
        device: str = "cpu",
        random_state: int = REFERENCE["seed"],
    ):
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.min_delta = min_delta
        self.grad_clip = grad_clip
        self.standardize = standardize
        self.val_fraction = val_fraction
        self.device = device
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None) -> SGDHeadProbe:
        """Train on ``X``, early-stopping on ``(X_val, y_val)`` (else a held-out share of X)."""
        X, Y, Xv, Yv = self._train_and_validation(X, y, X_val, y_val, [np.float64, np.float32])
        scaler = _Standardizer(X)
        mean = scaler.mean if self.standardize else np.zeros(X.shape[1])
        scale = scaler.scale if self.standardize else np.ones(X.shape[1])
        head = train_head(
            (X - mean) / scale,
            Y,
            (Xv - mean) / scale,
            Yv,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            min_delta=self.min_delta,
            grad_clip=self.grad_clip,
            seed=self.random_state,
            device=self.device,
        )
        self.coef_ = head.weight / scale
        self.intercept_ = head.bias - self.coef_ @ mean
        self.best_epoch_, self.val_loss_ = head.best_epoch, head.val_loss
        return self


class _Standardizer:
    """Column means and standard deviations of ``X`` (float64; zero deviations -> 1, as
    StandardScaler), applied in ``X``'s own dtype without float64 temporaries."""

    def __init__(self, X: np.ndarray):
        self.mean = X.mean(axis=0, dtype=np.float64)
        centred = X - self.mean.astype(X.dtype)
        var = np.einsum("ij,ij->j", centred, centred, dtype=np.float64) / len(X)
        scale = np.sqrt(var)
        self.scale = np.where(
            scale < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(self.mean)), 1.0, scale
        )

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean.astype(X.dtype)) / self.scale.astype(X.dtype)


def _is_gpu_array(X) -> bool:
    """A CUDA torch tensor or a CuPy array (decides ``backend='auto'``)."""
    device = getattr(X, "device", None)
    return "cuda" in str(device) or type(X).__module__.startswith("cupy")


def _to_host(X):
    """Numpy view of a torch tensor or CuPy array; anything else unchanged."""
    if hasattr(X, "detach") and hasattr(X, "cpu"):
        return X.detach().cpu().numpy()
    if type(X).__module__.startswith("cupy"):
        return X.get()
    return X
