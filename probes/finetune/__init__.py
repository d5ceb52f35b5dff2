"""Full fine-tuning of an encoder with the probes' heads, on the probes' folds.

``probes finetune MANIFEST --encoder NAME --label COL`` (or ``--mask COL``) trains the encoder and
a head together (AdamW, encoder and head as separate parameter groups), round by round of the
same split the probes use, and writes the same run folder, so probe and fine-tune results sit
in one table. Importing this package loads no model library; encoders are built when a run
starts. See docs/finetune.md.
"""

from probes.finetune.config import FinetuneConfig, default_encoder_lr
from probes.finetune.run import FinetuneRun, finetune

__all__ = ["FinetuneConfig", "FinetuneRun", "default_encoder_lr", "finetune"]
