"""The shuffled-label control as an estimator: any probe fitted on its training labels
permuted, so nothing it learns can be about the label.

::

    probe = ShuffledLabelProbe(LinearProbe(), random_state=5656)
    probe.fit(X_train, y_train, X_val=X_val, y_val=y_val)   # validation labels kept
    probe.predict_proba(X_test)
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

__all__ = ["ShuffledLabelProbe"]


class ShuffledLabelProbe(ClassifierMixin, BaseEstimator):
    """Fit a clone of ``estimator`` on ``X`` with the rows of ``y`` permuted (seeded by
    ``random_state``); prediction is the fitted clone's.

    The permutation keeps the class balance of the training rows and breaks every link between
    features and label. Validation rows (``X_val``, ``y_val``, when the estimator takes them,
    e.g. to choose C) keep their true labels, as the test rows do.

    Attributes:
        estimator_: the fitted clone. classes_, C_: the clone's (when it has them).
    """

    def __init__(self, estimator=None, random_state: int = 0):
        self.estimator = estimator
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None) -> ShuffledLabelProbe:
        """Fit on ``X`` ``(n, d)`` and ``y`` ``(n,)`` or ``(n, k)`` with its rows permuted."""
        from probes.linear.probe import LinearProbe

        y = np.asarray(y)
        order = np.random.default_rng(self.random_state).permutation(len(y))
        model = clone(LinearProbe() if self.estimator is None else self.estimator)
        takes_val = "X_val" in inspect.signature(model.fit).parameters
        if takes_val and X_val is not None:
            model.fit(X, y[order], X_val=X_val, y_val=y_val)
        else:
            model.fit(X, y[order])
        self.estimator_ = model
        self.classes_ = model.classes_
        if hasattr(model, "C_"):
            self.C_ = model.C_
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.estimator_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.estimator_.predict(X)
