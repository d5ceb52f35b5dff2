"""The reference study's classification head, trained on cached features.

One linear layer, AdamW (lr 1e-4, weight decay 1e-2), minibatches of 16, up to 500 epochs,
BCE-with-logits, gradient norm clipped to 1.0, early stopping on the validation loss (patience 5,
min delta 1e-4, as Lightning's ``EarlyStopping``), and the weights of the best validation epoch
kept (as Lightning's ``ModelCheckpoint``). The study trained in bf16 autocast through the frozen
encoder; on cached features the head trains in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE = dict(
    lr=1e-4,
    weight_decay=1e-2,
    batch_size=16,
    max_epochs=500,
    patience=5,
    min_delta=1e-4,
    grad_clip=1.0,
    seed=5656,
)


@dataclass
class HeadResult:
    """A trained head. weight: ``(k, d)``. bias: ``(k,)``. val_loss: ``(epochs run,)``."""

    weight: np.ndarray
    bias: np.ndarray
    best_epoch: int
    val_loss: np.ndarray


def train_head(
    X: np.ndarray,
    Y: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    patience: int,
    min_delta: float,
    grad_clip: float,
    seed: int,
    device: str = "cpu",
) -> HeadResult:
    """Train one linear layer ``d -> k`` with early stopping on ``(X_val, Y_val)``.

    Args:
        X: ``(n, d)`` features. Y: ``(n, k)`` labels in {0, 1}. X_val, Y_val: validation.
    Deterministic for a seed on one device and thread count.
    """
    import torch
    from torch.nn import functional as F

    Xt = torch.as_tensor(np.asarray(X, np.float32), device=device)
    Yt = torch.as_tensor(np.asarray(Y, np.float32), device=device)
    Xv = torch.as_tensor(np.asarray(X_val, np.float32), device=device)
    Yv = torch.as_tensor(np.asarray(Y_val, np.float32), device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(Xt.shape[1], Yt.shape[1]).to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best_loss, best_state, best_epoch = float("inf"), None, -1
    stop_best, wait, losses = float("inf"), 0, []
    for epoch in range(max_epochs):
        head.train()
        for batch in torch.randperm(len(Xt), generator=generator).to(device).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(head(Xt[batch]), Yt[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val_loss = float(F.binary_cross_entropy_with_logits(head(Xv), Yv))
        losses.append(val_loss)
        if val_loss < best_loss:  # ModelCheckpoint: keep the best validation weights
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if val_loss < stop_best - min_delta:  # EarlyStopping: improvement beyond min_delta
            stop_best, wait = val_loss, 0
        else:
            wait += 1
            if wait >= patience:
                break
    head.load_state_dict(best_state)
    return HeadResult(
        head.weight.detach().cpu().double().numpy(),
        head.bias.detach().cpu().double().numpy(),
        best_epoch,
        np.asarray(losses),
    )
