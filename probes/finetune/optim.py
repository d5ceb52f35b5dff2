"""AdamW with the encoder and the head as separate parameter groups, optional layer-wise decay,
and the per-epoch learning-rate schedule.

Layer-wise decay needs each encoder parameter's depth. Registration order does not give it
(older transformers registered all of SegFormer's patch embeddings before its blocks and all
stage norms after them), so depth is read from execution order: one forward pass records when
each module first runs. A block is a numbered module holding no numbered modules itself
(``encoder.layer.3``, ``stages.1.blocks.0``); each block is one depth, counted in the order the
blocks run. Any other parameter (embeddings, a stage's patch embedding or norm, a final norm)
takes the depth of the last block that ran before it (0 before any), and parameters that never
run (a DINOv2 mask token) depth 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from probes.finetune.config import FinetuneConfig
from probes.finetune.model import FinetuneModel


def block_of(name: str) -> str | None:
    """The numbered block a parameter belongs to (``model.encoder.layer.3`` for
    ``model.encoder.layer.3.attention.query.weight``), or ``None`` outside numbered blocks."""
    parts = name.split(".")
    numbered = [i for i, part in enumerate(parts[:-1]) if part.isdigit()]
    return ".".join(parts[: numbered[-1] + 1]) if numbered else None


@torch.no_grad()
def encoder_depths(encoder: nn.Module, input_size: int) -> dict[str, int]:
    """Depth of every encoder parameter, from the order modules run on one blank image
    ``(1, 3, input_size, input_size)`` (see the module docstring)."""
    first_call: dict[str, int] = {}
    hooks = []
    for name, module in encoder.named_modules():

        def record(_module, _inputs, name=name):
            first_call.setdefault(name, len(first_call))

        hooks.append(module.register_forward_pre_hook(record))
    was_training = encoder.training
    try:
        encoder.eval()
        device = next(encoder.parameters()).device
        encoder(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train(was_training)

    def unit_time(param_name: str) -> float:
        module = param_name.rsplit(".", 1)[0] if "." in param_name else ""
        return first_call.get(module, math.inf)

    names = [name for name, _ in encoder.named_parameters()]
    numbered = {block_of(name) for name in names} - {None}
    blocks = {b for b in numbered if not any(o.startswith(f"{b}.") for o in numbered)}

    def unit_of(name: str) -> str:
        block = block_of(name)
        return block if block in blocks else name

    units: dict[str, float] = {}  # a block, or a parameter outside blocks -> its first run
    for name in names:
        unit = unit_of(name)
        units[unit] = min(units.get(unit, math.inf), unit_time(name))
    depth_of_unit, depth = {}, 0
    for unit, time in sorted(units.items(), key=lambda item: item[1]):
        if math.isinf(time):
            depth_of_unit[unit] = 0
            continue
        if unit in blocks:  # a numbered block: one level deeper
            depth += 1
        depth_of_unit[unit] = depth
    return {name: depth_of_unit[unit_of(name)] for name in names}


def parameter_groups(
    model: FinetuneModel, config: FinetuneConfig, input_size: int
) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``encoder`` (or ``encoder.depth<d>`` with layer decay) at the
    encoder learning rate, ``head`` at the head learning rate. With ``encoder_lr == 0`` the
    encoder is frozen (``requires_grad`` off) and has no group."""
    if config.encoder_lr is None:
        raise ValueError("resolve encoder_lr first (FinetuneConfig.resolved)")
    groups: list[dict[str, Any]] = []
    encoder_params = model.encoder_parameters()
    if config.encoder_lr == 0:
        for _, param in encoder_params:
            param.requires_grad_(False)
    elif config.layer_decay is None:
        groups.append(
            {"name": "encoder", "params": [p for _, p in encoder_params], "lr": config.encoder_lr}
        )
    else:
        depths = encoder_depths(model.encoder, input_size)
        deepest = max(depths.values())
        for depth in sorted(set(depths.values())):
            params = [p for name, p in encoder_params if depths[name] == depth]
            lr = config.encoder_lr * config.layer_decay ** (deepest - depth)
            groups.append({"name": f"encoder.depth{depth}", "params": params, "lr": lr})
    groups.append({"name": "head", "params": [p for _, p in model.head_parameters()]})
    groups[-1]["lr"] = config.head_lr
    return groups


def make_optimizer(
    model: FinetuneModel, config: FinetuneConfig, input_size: int
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, weight decay ``config.weight_decay`` in every group."""
    return torch.optim.AdamW(
        parameter_groups(model, config, input_size), weight_decay=config.weight_decay
    )


def lr_factor(epoch: int, config: FinetuneConfig) -> float:
    """Multiplier of every group's learning rate in ``epoch`` (0-based)."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.max_epochs - config.warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: FinetuneConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch schedule (:func:`lr_factor`); its state dict holds numbers only."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config))
