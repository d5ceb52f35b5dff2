"""MLP probe: one hidden layer on frozen feature vectors, a scikit-learn estimator.

Where a linear probe asks whether a label is a direction of the feature space, the MLP asks
whether it is any simple function of it (an XOR of two directions, a band...). Standardisation,
``Linear(d, hidden) -> ReLU -> Dropout -> Linear(hidden, k)``, AdamW on binary cross-entropy
(one output per label column), early stopping on the validation loss with the best epoch's
weights restored::

    probe = MLPProbe().fit(X_train, y_train, X_val=X_val, y_val=y_val)
    probe.predict_proba(X_test)[:, 1]

Trains with torch (CPU or CUDA); predicts with numpy from the learned weights (``coefs_``,
``intercepts_``), so a fitted probe needs no torch to score.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from probes.linear.probe import _BinaryProbe, _Standardizer, _to_host

__all__ = ["MLPProbe"]


class MLPProbe(_BinaryProbe):
    """One-hidden-layer MLP probe with dropout and early stopping (binary or multilabel 0/1).

    Args:
        hidden: units of the hidden layer.
        dropout: dropout after the hidden layer (training only).
        lr, weight_decay: AdamW.
        batch_size: rows per minibatch. max_epochs: passes over the training rows.
        patience, min_delta: stop when the validation loss has not improved by ``min_delta``
            for ``patience`` epochs; the best epoch's weights are kept.
        val_fraction: share of ``X`` held out (stratified, seeded) for early stopping when
            ``fit`` gets no validation set.
        device: torch device for training (``cpu``, ``cuda``; ``auto``: CUDA when present).
        num_threads: torch CPU threads while training (``None``: torch's setting). 1 by
            default: the minibatches are small, and two threads on two busy cores were 25x
            slower than one here.
        random_state: seed of the initialisation, dropout, batch order and held-out split.

    Attributes:
        coefs_: ``[(d, hidden), (hidden, k)]`` weights on standardised features.
        intercepts_: ``[(hidden,), (k,)]``. mean_, scale_: ``(d,)`` standardisation.
        best_epoch_, n_epochs_, history_ (per-epoch losses), classes_, multilabel_.
    """

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 128,
        max_epochs: int = 200,
        patience: int = 10,
        min_delta: float = 1e-4,
        val_fraction: float = 0.2,
        device: str = "cpu",
        num_threads: int | None = 1,
        random_state: int = 5656,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.min_delta = min_delta
        self.val_fraction = val_fraction
        self.device = device
        self.num_threads = num_threads
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None) -> MLPProbe:
        """Train on ``X`` ``(n, d)``, early-stopping on ``(X_val, y_val)`` (else a held-out
        share of X)."""
        X, Y, Xv, Yv = self._train_and_validation(X, y, X_val, y_val, [np.float32, np.float64])
        scaler = _Standardizer(X)
        self.mean_, self.scale_ = scaler.mean, scaler.scale
        net, self.history_, self.best_epoch_ = self._train(
            scaler(X).astype(np.float32), Y, scaler(Xv).astype(np.float32), Yv
        )
        self.n_epochs_ = len(self.history_)
        self.coefs_ = [
            net.hidden.weight.detach().cpu().numpy().T.astype(np.float64),
            net.out.weight.detach().cpu().numpy().T.astype(np.float64),
        ]
        self.intercepts_ = [
            net.hidden.bias.detach().cpu().numpy().astype(np.float64),
            net.out.bias.detach().cpu().numpy().astype(np.float64),
        ]
        return self

    def _train(self, X, Y, Xv, Yv):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.num_threads or before)
        try:
            return self._train_loop(torch, X, Y, Xv, Yv)
        finally:
            torch.set_num_threads(before)

    def _train_loop(self, torch, X, Y, Xv, Yv):
        device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu")
            if self.device == "auto"
            else self.device
        )
        generator = torch.Generator().manual_seed(self.random_state)
        net = _Net(X.shape[1], self.hidden, Y.shape[1], generator).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        x, t = torch.from_numpy(X).to(device), torch.from_numpy(Y.astype(np.float32)).to(device)
        xv, tv = torch.from_numpy(Xv).to(device), torch.from_numpy(Yv.astype(np.float32)).to(device)
        history, best, best_state, best_epoch, waited = [], np.inf, None, 0, 0
        for epoch in range(self.max_epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(x), self.batch_size):
                index = order[start : start + self.batch_size]
                # dropout masks from the seeded generator: the same run gives the same bits
                keep = torch.rand(len(index), self.hidden, generator=generator).to(device)
                keep = (keep >= self.dropout).float() / (1.0 - self.dropout)
                loss = _bce(net(x[index], keep), t[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
            with torch.no_grad():
                val_loss = float(_bce(net(xv), tv))
            history.append({"epoch": epoch, "train_loss": total / len(x), "val_loss": val_loss})
            if val_loss < best - self.min_delta:
                best, best_epoch, waited = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net, history, best_epoch

    def decision_function(self, X) -> np.ndarray:
        """Logits, ``(n,)`` for one label, ``(n, k)`` for k label columns (numpy)."""
        check_is_fitted(self, "coefs_")
        X = validate_data(self, _to_host(X), reset=False, dtype=[np.float32, np.float64])
        h = (np.asarray(X, np.float64) - self.mean_) / self.scale_
        h = np.maximum(h @ self.coefs_[0] + self.intercepts_[0], 0.0)
        z = h @ self.coefs_[1] + self.intercepts_[1]
        return z if self.multilabel_ else z[:, 0]


def _bce(logits, target):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, target)


def _Net(d: int, hidden: int, k: int, generator):
    """``Linear -> ReLU -> (dropout mask) -> Linear``, initialised from ``generator`` as
    ``nn.Linear`` (uniform in +-1/sqrt(fan_in))."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = nn.Linear(d, hidden), nn.Linear(hidden, k)
            with torch.no_grad():
                for layer in (self.hidden, self.out):
                    bound = 1.0 / np.sqrt(layer.in_features)
                    for p in (layer.weight, layer.bias):
                        p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)

        def forward(self, x, keep=None):
            h = torch.relu(self.hidden(x))
            return self.out(h if keep is None else h * keep)

    return Net()
