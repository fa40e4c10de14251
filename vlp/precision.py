"""Losses in float32 whatever the autocast dtype.

Under ``bf16-mixed`` or ``16-mixed`` the towers run in half precision, so embeddings
arrive as bf16/fp16 and autocast would also run the loss's matmuls in half precision:
logits rounded to 8 bits of mantissa, and softmax over tens of thousands of them. The
loss functions of ``vlp.functional`` are wrapped so that their half-precision tensor
arguments are upcast and autocast is off inside: logits, softmax and the loss are
float32 (float64 inputs stay float64), and gradients flow back to the half-precision
embeddings through the upcast.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any, Callable, TypeVar

import torch

from vlp.distributed import Gathered

F = TypeVar("F", bound=Callable[..., Any])
HALF = (torch.float16, torch.bfloat16)


def _upcast(value: Any) -> Any:
    if isinstance(value, Gathered) and value.local.dtype in HALF:  # a step's shared normalised view
        return Gathered(value.local.float(), value.all.float(), value.sizes)
    return value.float() if isinstance(value, torch.Tensor) and value.dtype in HALF else value


def in_float32(function: F) -> F:
    """Decorator: run ``function`` with autocast off and half-precision tensor arguments in float32."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            for device_type in ("cpu", "cuda"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return function(*map(_upcast, args), **{key: _upcast(value) for key, value in kwargs.items()})

    return wrapper  # type: ignore[return-value]
