"""What a model returns for the preset's input, without computing it: :func:`dry_run`.

Grid shapes are read from the model's own outputs, never derived from ``input // stride``
(padded convolutions give the ceiling, valid ones the floor: Xception at 299 px has a 19x19
stride-16 map, Inception v3 a 17x17 one). The forward runs once, at build time, on PyTorch's
``meta`` device: the parameters and buffers are swapped for storage-less meta tensors of the
same shapes (``torch.func.functional_call``), so even a 400M-parameter model costs
milliseconds. Model code that cannot run on ``meta`` (data-dependent ``.item()`` calls, tensors
made on the CPU inside ``forward``) gets one real batch-1 forward on zeros instead.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors a forward on meta tensors raises where model code needs real values or devices.
_META_ERRORS = (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError)


class _Call(nn.Module):
    """``module`` as a child, ``call(x)`` as the forward: lets ``functional_call`` swap the
    parameters of ``module`` around an arbitrary method (``forward_intermediates``, ...)."""

    def __init__(self, module: nn.Module, call: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.inner = module
        self._call = call

    def forward(self, x: torch.Tensor) -> object:
        return self._call(x)


def dry_run(
    module: nn.Module, call: Callable[[torch.Tensor], T], input_size: int, channels: int = 3
) -> T:
    """``call(x)`` for ``x`` = zeros ``(1, channels, S, S)``, with ``module``'s weights.

    Args:
        module: the model whose parameters and buffers ``call`` uses (the encoder itself, or its
            wrapped model).
        call: what to run, e.g. ``lambda x: model.forward_intermediates(x, indices=[2, 3])``.
        input_size: S, the preset's input side, pixels.
        channels: input channels.

    Returns:
        ``call``'s result: meta tensors (shapes and dtypes only), or real tensors where the model
        could not run on ``meta``. ``module`` is left unchanged either way.
    """
    reference = next(itertools.chain(module.parameters(), module.buffers()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    state = {
        f"inner.{name}": torch.empty_like(tensor, device="meta")
        for name, tensor in itertools.chain(
            module.named_parameters(remove_duplicate=False),
            module.named_buffers(remove_duplicate=False),
        )
    }
    wrapper = _Call(module, call)
    x = torch.zeros(1, channels, input_size, input_size, device="meta", dtype=dtype)
    try:
        with torch.inference_mode():
            return torch.func.functional_call(wrapper, state, (x,), tie_weights=False)
    except _META_ERRORS as exc:
        log.debug("%s cannot run on meta (%s); one real forward", type(module).__name__, exc)
    device = reference.device if reference is not None else torch.device("cpu")
    with torch.inference_mode():
        return call(torch.zeros(1, channels, input_size, input_size, device=device, dtype=dtype))
