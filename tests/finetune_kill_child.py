"""Child process for test_finetune_run.py: a fine-tune that SIGKILLs itself at a chosen point.

    python tests/finetune_kill_child.py MANIFEST SPEC OUT SETTINGS_JSON POINT
    POINT = epoch:R:E | save:N

``epoch:R:E`` dies right after round R's epoch E was checkpointed; ``save:N`` dies half-way
through writing the N-th checkpoint file (its temporary file is left behind, the previous
checkpoint untouched). SETTINGS_JSON holds ``finetune`` keyword arguments, ``config`` as the
fields of a FinetuneConfig.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

import torch

from probes.finetune import FinetuneConfig, finetune
from probes.finetune import checkpoint as ckpt


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    manifest, spec, out, settings, point = sys.argv[1:6]
    kwargs = json.loads(settings)
    kwargs["config"] = FinetuneConfig(**kwargs["config"])
    what, _, where = point.partition(":")
    hook = None
    if what == "epoch":
        round_index, epoch = (int(v) for v in where.split(":"))

        def hook(r, e, _record):
            if (r, e) == (round_index, epoch):
                die()

    elif what == "save":
        calls = {"n": 0}
        original = torch.save

        def half_save(obj, handle, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] != int(where):
                return original(obj, handle, *args, **kwargs)
            buffer = io.BytesIO()
            original(obj, buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            die()

        ckpt.torch.save = half_save
    finetune(manifest, spec, out, on_epoch=hook, **kwargs)


if __name__ == "__main__":
    main()
