"""One round of a fine-tune: train on the round's training rows, early-stop on its validation
rows, checkpoint every epoch, resume after an interruption, end with the best epoch's weights.

Determinism: the round seeds torch's RNG (dropout) before building the head, every epoch's batch
order is a function of (seed, epoch) (:func:`probes.finetune.data.train_batches`), augmentation
draws from a generator seeded by (seed, round, epoch), and a checkpoint carries the RNG states
of every process. On one device and thread count, a run killed after any epoch and resumed ends
with the weights, and so the predictions, of an uninterrupted run.

Early stopping follows the reference (Lightning's ``EarlyStopping`` + ``ModelCheckpoint``): the
checkpoint kept is the epoch of lowest validation loss; training stops once the loss has not
improved by ``min_delta`` for ``patience`` epochs. A round without validation rows trains for
``max_epochs`` and keeps the last epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedcache.extract.batches import CohortImages
from probes.finetune import checkpoint as ckpt
from probes.finetune.augment import augment_batch
from probes.finetune.config import FinetuneConfig
from probes.finetune.data import Plan, Targets, eval_batches, train_batches
from probes.finetune.distributed import Context, all_sum, barrier, gather, wrap
from probes.finetune.model import FinetuneModel, enable_gradient_checkpointing
from probes.finetune.optim import make_optimizer, make_scheduler

#: Called after each epoch's checkpoint with ``(round, epoch, record)``; tests stop runs here.
EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass
class EarlyStopping:
    """Lightning's early stopping and best checkpoint, as the reference used them.

    Attributes:
        best_loss, best_epoch: the lowest validation loss so far and its epoch (the kept model).
        stop_best, wait: the loss the patience counts from (improved by ``min_delta``) and the
            epochs since. stopped: patience ran out.
    """

    patience: int
    min_delta: float
    best_loss: float = math.inf
    best_epoch: int = -1
    stop_best: float = math.inf
    wait: int = 0
    stopped: bool = False

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        best = val_loss < self.best_loss
        if best:
            self.best_loss, self.best_epoch = val_loss, epoch
        if val_loss < self.stop_best - self.min_delta:
            self.stop_best, self.wait = val_loss, 0
        else:
            self.wait += 1
            self.stopped = self.wait >= self.patience
        return best

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best_loss", "best_epoch", "stop_best", "wait")} | {
            "stopped": self.stopped
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


@dataclass
class Evaluation:
    """A pass over rows: pooled ``loss``, task ``metric``, and per-row outputs in ``rows`` order
    (``score`` for classification, ``tp``/``fp``/``fn`` for segmentation)."""

    rows: np.ndarray
    loss: float
    metric: float
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RoundResult:
    """A trained round: the model (best epoch's weights, eval mode), per-epoch ``history``
    (epoch, train_loss, val_loss, val metric, learning rates), ``best_epoch`` and
    ``epochs_run``, and whether it continued from a checkpoint."""

    model: FinetuneModel
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    resumed_from: int | None


class Trainer:
    """Trains and evaluates :class:`FinetuneModel` s for one task.

    Args:
        config: the settings, ``encoder_lr`` resolved.
        objective: the task's loss and metric (:mod:`probes.finetune.objectives`).
        images: the cohort's images through the encoder's preprocessing.
        targets: labels or masks of every row.
        ctx: this process's place in the DDP group.
        plan: batch size, workers, sampler seed and this process's rank.
        input_size: the encoder's input side (for layer-wise decay's depth probe).
    """

    def __init__(
        self,
        config: FinetuneConfig,
        objective: Any,
        images: CohortImages,
        targets: Targets,
        ctx: Context,
        plan: Plan,
        input_size: int,
    ):
        self.config = config
        self.objective = objective
        self.images = images
        self.targets = targets
        self.ctx = ctx
        self.plan = plan
        self.input_size = input_size

    # -- one round -----------------------------------------------------------------------------

    def fit_round(
        self,
        make_model: Callable[[], FinetuneModel],
        round_index: int,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        folder: Path,
        *,
        progress: bool = False,
        on_epoch: EpochHook | None = None,
    ) -> RoundResult:
        """Train one round, resuming from ``folder/last.pt`` when it exists."""
        cfg, ctx = self.config, self.ctx
        if ctx.main:
            ckpt.clear_partial(folder)
        torch.manual_seed(cfg.seed + 7919 * round_index + ctx.rank)
        model = make_model().to(ctx.device)
        if cfg.grad_checkpointing:
            enable_gradient_checkpointing(model.encoder)
        optimizer = make_optimizer(model, cfg, self.input_size)
        scheduler = make_scheduler(optimizer, cfg)
        stopper = EarlyStopping(cfg.patience, cfg.min_delta)
        history: list[dict[str, float]] = []
        start, resumed_from = 0, None
        last, best = folder / "last.pt", folder / "best.pt"
        if last.exists():
            state = ckpt.load_state(last, ctx.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            stopper.load_state_dict(state["early_stopping"])
            history = list(state["history"])
            start = resumed_from = int(state["epoch"]) + 1
            if len(state["rng"]) == ctx.world_size:
                ckpt.set_rng_state(state["rng"][ctx.rank], ctx.device)
            else:  # another number of processes: the batches differ anyway
                warnings.warn(
                    f"{last} was written by {len(state['rng'])} process(es), this run has "
                    f"{ctx.world_size}: it continues, but not as the interrupted run would have",
                    stacklevel=2,
                )
                torch.manual_seed(_seed(cfg.seed, round_index, start, ctx.rank))
        trained = wrap(model, ctx)
        frozen = cfg.encoder_lr == 0
        epochs = range(start, cfg.max_epochs)
        bar = None
        if progress and ctx.main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.max_epochs, initial=start, desc=f"round {round_index}", unit="epoch"
            )
        try:
            for epoch in epochs:
                if stopper.stopped:
                    break
                train_loss = self._train_epoch(
                    trained, model, optimizer, train_rows, round_index, epoch, frozen
                )
                record: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
                for group in optimizer.param_groups:
                    record[f"lr_{group['name']}"] = group["lr"]
                if len(val_rows):
                    val = self.evaluate(model, val_rows)
                    record["val_loss"], record[f"val_{self.objective.metric_name}"] = (
                        val.loss,
                        val.metric,
                    )
                    is_best = stopper.update(epoch, val.loss)
                else:
                    is_best, stopper.best_epoch = True, epoch
                scheduler.step()
                history.append(record)
                if is_best and ctx.main:
                    ckpt.save_atomic({"model": model.state_dict(), "epoch": epoch}, best)
                rngs = gather(ctx, ckpt.rng_state(ctx.device))
                if ctx.main:
                    ckpt.save_atomic(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "early_stopping": stopper.state_dict(),
                            "history": history,
                            "rng": rngs,
                            "epoch": epoch,
                        },
                        last,
                    )
                barrier(ctx)
                if bar is not None:
                    bar.set_postfix(_postfix(record), refresh=False)
                    bar.update()
                if on_epoch is not None:
                    on_epoch(round_index, epoch, record)
        finally:
            if bar is not None:
                bar.close()
        barrier(ctx)
        if not best.exists():
            raise RuntimeError(f"round {round_index} ended without a best checkpoint in {folder}")
        model.load_state_dict(ckpt.load_state(best, ctx.device)["model"])
        model.eval()
        return RoundResult(model, history, stopper.best_epoch, len(history), resumed_from)

    # -- epochs --------------------------------------------------------------------------------

    def _autocast(self):
        device = self.ctx.device
        if self.config.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_epoch(
        self,
        trained: torch.nn.Module,
        model: FinetuneModel,
        optimizer: torch.optim.Optimizer,
        rows: np.ndarray,
        round_index: int,
        epoch: int,
        frozen: bool,
    ) -> float:
        """One pass over this process's batches; returns the mean training loss of the group."""
        cfg, device = self.config, self.ctx.device
        trained.train()
        if frozen:
            model.encoder.eval()  # a frozen encoder computes what extraction computed
        params = [p for group in optimizer.param_groups for p in group["params"]]
        generator = torch.Generator().manual_seed(_seed(cfg.seed, round_index, epoch))
        plan = dataclasses.replace(self.plan, seed=_seed(cfg.seed, round_index))
        # The loss is summed on the device and read once per epoch: a float() per step would
        # make the CPU wait for the GPU every batch instead of queueing the next one.
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for batch in train_batches(self.images, rows, plan, epoch):
            pixels = batch.pixels.to(device, non_blocking=True)
            target = self.targets.take(batch.rows)
            if cfg.augment:
                masks = None
                if self.targets.masks is not None:
                    masks = torch.from_numpy(np.asarray(target)).to(device)
                pixels, masks = augment_batch(pixels, masks, generator)
                if masks is not None:
                    target = masks.cpu().numpy()
            with self._autocast():
                out = trained(pixels)
            loss = self.objective.batch_loss(out, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            total += loss.detach().double() * len(batch.rows)
            count += len(batch.rows)
        total, count = all_sum(self.ctx, [float(total), count])
        return total / count if count else float("nan")

    @torch.no_grad()
    def evaluate(
        self, model: FinetuneModel, rows: np.ndarray, keep_masks: bool = False
    ) -> Evaluation:
        """Loss, metric and per-row outputs over ``rows``. Each process scores its share; every
        process gets the whole result, outputs in ``rows`` order. ``keep_masks``: segmentation
        outputs also carry each predicted mask as RLE (the final scoring only)."""
        model.eval()
        rows = np.asarray(rows, dtype=np.int64)
        sums: list[float] | None = None
        done, outputs = [], []
        for batch in eval_batches(self.images, rows, self.plan):
            with self._autocast():
                out = model(batch.pixels.to(self.ctx.device, non_blocking=True))
            target = self.targets.take(batch.rows)
            parts, per_row = self.objective.eval_parts(out, target, keep_masks)
            sums = parts if sums is None else [a + b for a, b in zip(sums, parts, strict=True)]
            done.append(np.asarray(batch.rows, dtype=np.int64))
            outputs.append(per_row)
        pieces = [p for p in gather(self.ctx, (done, outputs, sums)) if p[2] is not None]
        if not pieces:
            raise ValueError("evaluate() needs at least one row")
        totals = [sum(values) for values in zip(*(p[2] for p in pieces), strict=True)]
        scored = np.concatenate([r for p in pieces for r in p[0]])
        merged = {k: np.concatenate([o[k] for p in pieces for o in p[1]]) for k in pieces[0][1][0]}
        position = {row: i for i, row in enumerate(scored.tolist())}
        take = np.array([position[row] for row in rows.tolist()], dtype=np.int64)
        merged = {k: v[take] for k, v in merged.items()}
        metric = self.objective.metric(merged, self.targets.take(rows))
        return Evaluation(rows, self.objective.eval_loss(totals), metric, merged)


def _seed(*parts: int) -> int:
    """A 63-bit seed drawn from ``parts`` (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _postfix(record: dict[str, float]) -> dict[str, str]:
    shown = {k: v for k, v in record.items() if k != "epoch" and not k.startswith("lr_")}
    return {k.replace("_loss", ""): f"{v:.4f}" for k, v in shown.items()}
