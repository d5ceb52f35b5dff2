"""k-NN probe: cosine nearest neighbours with temperature-weighted votes, as in DINO's k-NN
evaluation, k chosen on the validation set. A scikit-learn estimator on vectors.

Each query's ``k`` most cosine-similar training rows vote with weight ``exp(s / T)`` (DINO:
``T = 0.07``); the score of a label is the weighted share of positive votes, a probability in
[0, 1] comparable across images (DINO's class vote divided by the total vote). The neighbours
are found once, for the largest ``k`` of the grid, and every ``k`` is scored from the same sorted
list. Search is exact and blocked (:mod:`probes.knn.search`)::

    probe = KNNProbe().fit(X_train, y_train, X_val=X_val, y_val=y_val)
    probe.k_, probe.predict_proba(X_test)[:, 1]
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from probes.core.metrics import auroc
from probes.knn.search import BLOCK_MB, cosine_topk, normalize_rows
from probes.linear.probe import _BinaryProbe, _to_host

__all__ = ["DEFAULT_KS", "KNNProbe"]

#: The k grid searched on the validation set (DINO reports 10, 20, 100, 200).
DEFAULT_KS = (5, 10, 20, 50, 100, 200)


class KNNProbe(_BinaryProbe):
    """Cosine k-NN with DINO's weighted votes (binary or multilabel 0/1 labels).

    Args:
        ks: the k grid; ``k`` is chosen per label on ``fit``'s validation set (AUROC; negative
            log loss where the validation rows hold one class), or, without one, by
            leave-one-out on the training rows. Values above the training rows are dropped.
        k: a fixed k (no choice).
        temperature: ``T`` of the vote weights ``exp(similarity / T)``.
        block_mb: memory of one block of similarities during search (MB).
        device: ``None`` (numpy, CPU) or a torch device (``cuda``...).

    Attributes:
        X_: ``(n, d)`` float32 unit-norm training rows. Y_: ``(n, k)`` 0/1 labels.
        ks_: the grid searched. scores_: ``(labels, len(ks_))`` validation scores.
        k_: ``(labels,)`` chosen k per label. classes_, multilabel_.
    """

    def __init__(
        self,
        ks=DEFAULT_KS,
        k: int | None = None,
        temperature: float = 0.07,
        block_mb: float = BLOCK_MB,
        device: str | None = None,
    ):
        self.ks = ks
        self.k = k
        self.temperature = temperature
        self.block_mb = block_mb
        self.device = device

    def fit(self, X, y, X_val=None, y_val=None) -> KNNProbe:
        """Keep the training rows; choose k on ``(X_val, y_val)`` (else leave-one-out)."""
        X = validate_data(self, _to_host(X), dtype=[np.float32, np.float64])
        check_consistent_length(X, y)
        self.Y_ = self._encode_labels(y)
        self.X_ = normalize_rows(X)
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        grid = [int(self.k)] if self.k is not None else sorted({int(v) for v in self.ks})
        n = len(self.X_)
        self.ks_ = np.array([v for v in grid if v <= n - (X_val is None)] or [max(1, n - 1)])
        if len(self.ks_) == 1:
            self.scores_ = np.zeros((self.Y_.shape[1], 1))
        elif X_val is not None:
            Xv = validate_data(self, _to_host(X_val), reset=False, dtype=[np.float32, np.float64])
            sims, index = self._search(normalize_rows(Xv), self.ks_[-1])
            self.scores_ = self._score(sims, index, self._labels_like_fit(y_val))
        else:  # leave-one-out: each training row against the others
            sims, index = self._search(self.X_, self.ks_[-1], exclude=np.arange(n))
            self.scores_ = self._score(sims, index, self.Y_)
        # the best k per label; ties go to the smaller k
        self.k_ = self.ks_[np.argmax(self.scores_, axis=1)]
        return self

    def _search(self, queries, k, exclude=None):
        return cosine_topk(
            queries, self.X_, int(k), exclude=exclude, block_mb=self.block_mb, device=self.device
        )

    def _votes(self, sims: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``(m, K, labels)`` weighted positive share among the first 1..K neighbours."""
        weights = np.exp((sims - sims[:, :1]) / self.temperature)  # best first: max is col 0
        weights = weights.astype(np.float64)
        positive = weights[:, :, None] * self.Y_[index]  # (m, K, labels)
        share = np.cumsum(positive, axis=1) / np.cumsum(weights, axis=1)[:, :, None]
        return np.clip(share, 0.0, 1.0)  # float rounding can leave a share a hair above 1

    def _score(self, sims, index, Y) -> np.ndarray:
        """``(labels, len(ks_))`` validation score of each k."""
        votes = self._votes(sims, index)[:, self.ks_ - 1]  # (m, len(ks), labels)
        scores = np.empty((Y.shape[1], len(self.ks_)))
        for j in range(Y.shape[1]):
            y = Y[:, j]
            if 0 < y.sum() < len(y):
                scores[j] = [auroc(y, votes[:, i, j]) for i in range(votes.shape[1])]
            else:
                p = np.clip(votes[:, :, j], 1e-7, 1 - 1e-7)
                scores[j] = [-log_loss(y, p[:, c], labels=[0, 1]) for c in range(p.shape[1])]
        return scores

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 2)`` for one label; ``(n, k)`` P(label = 1) for k label columns."""
        check_is_fitted(self, "k_")
        X = validate_data(self, _to_host(X), reset=False, dtype=[np.float32, np.float64])
        sims, index = self._search(normalize_rows(X), int(self.k_.max()))
        votes = self._votes(sims, index)
        p = np.stack([votes[:, k - 1, j] for j, k in enumerate(self.k_)], axis=1)
        return p if self.multilabel_ else np.column_stack([1.0 - p[:, 0], p[:, 0]])

    def decision_function(self, X) -> np.ndarray:
        """Log-odds of the vote share (clipped), ``(n,)`` or ``(n, k)``."""
        p = self.predict_proba(X)
        p = np.clip(p if self.multilabel_ else p[:, 1], 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))
