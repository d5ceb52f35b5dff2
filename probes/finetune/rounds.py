"""One round of a fine-tune as a unit of resumption: trained, scored and recorded, or read
back when its predictions (written last) are already in its checkpoint folder."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from probes.core.results import read_table
from probes.finetune import checkpoint as ckpt
from probes.finetune.distributed import barrier

__all__ = ["ROUND_INFO", "ROUND_PREDICTIONS", "chosen_rounds", "run_round"]

ROUND_PREDICTIONS = "predictions.parquet"
ROUND_INFO = "round.json"


def run_round(trainer, make_model, setup_, split, index, out, ctx, progress, on_epoch, save_masks):
    """Train, score and record round ``index``, or read it back when it is already done.
    Returns ``(predictions, info)``."""
    r = split[index]
    folder = ckpt.round_dir(out, r.index)
    done = folder / ROUND_PREDICTIONS
    if done.exists():
        return read_table(done), json.loads((folder / ROUND_INFO).read_text())
    result = trainer.fit_round(
        make_model, r.index, r.train, r.val, folder, progress=progress, on_epoch=on_epoch
    )
    parts = [
        (name, part, trainer.evaluate(result.model, part, keep_masks=save_masks).outputs)
        for name, part in (("val", r.val), ("test", r.test))
        if len(part)
    ]
    table = setup_.table(split, r.index, parts, result.best_epoch)
    info = {
        "round": r.index,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "resumed_from": result.resumed_from,
        "history": result.history,
    }
    if ctx.main:
        ckpt.write_atomic((json.dumps(info, indent=2) + "\n").encode(), folder / ROUND_INFO)
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        ckpt.write_atomic(buffer.getvalue(), done)  # the round's "done" mark, written last
        (folder / "last.pt").unlink(missing_ok=True)
    barrier(ctx)
    return table, info


def chosen_rounds(rounds: Sequence[int] | None, n_rounds: int) -> list[int]:
    if rounds is None:
        return list(range(n_rounds))
    chosen = sorted(set(int(r) for r in rounds))
    bad = [r for r in chosen if not 0 <= r < n_rounds]
    if bad:
        raise ValueError(f"rounds {bad} do not exist: the split has rounds 0..{n_rounds - 1}")
    return chosen
