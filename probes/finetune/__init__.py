"""Full fine-tuning of an encoder with the probes' heads, on the probes' folds.

``probes.finetune(manifest, encoder, out, labels=[...])`` (or ``mask=...``; the same function
as ``probes.finetune.finetune``) trains the encoder and a head together (AdamW, encoder and
head as separate parameter groups), round by round of the same split the probes use, and
returns a :class:`~probes.core.run.Run` written to the same kind of run folder, so probe and
fine-tune results sit in one table. Importing this package loads no model library; encoders
are built when a run starts. See docs/finetune.md.
"""

from probes._lazy import lazy_exports, make_callable

__all__ = ["FinetuneConfig", "FinetuneRun", "default_encoder_lr", "finetune"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "FinetuneConfig": ".config",
        "default_encoder_lr": ".config",
        "FinetuneRun": ".run",
        "finetune": ".run",
    },
)


def _finetune(*args, **kwargs):
    """``probes.finetune(...)``: :func:`probes.finetune.run.finetune`."""
    from probes.finetune.run import finetune

    return finetune(*args, **kwargs)


make_callable(__name__, _finetune)
