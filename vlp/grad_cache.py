"""Exact large-batch gradients from micro-batches for contrastive objectives (GradCache, Gao et al., 2021).

A contrastive loss couples every sample of the batch, so plain gradient accumulation
(``trainer.accumulate_grad_batches``) computes a different loss: each micro-batch only
meets its own negatives. GradCache splits the tower work instead of the loss:

1. the towers embed every micro-batch without a graph (memory: one micro-batch of
   activations at a time), and the tower outputs are concatenated into leaves;
2. the objectives compute the loss over the whole batch from those leaves, and autograd
   gives the loss's gradient with respect to every leaf (and to the objectives' own
   parameters, e.g. the temperature);
3. each micro-batch is embedded again, with a graph, and its outputs are back-propagated
   with their slice of those gradients, accumulating the towers' parameter gradients.

The sum is exactly the gradient of the full-batch loss. The random state is replayed per
micro-batch, so dropout or random views draw the same numbers in steps 1 and 3 (torch's
generators only). Towers with batch statistics (BatchNorm) see micro-batches and are not
exact. Enabled by ``optim.grad_cache_micro_batches: K``; Lightning's automatic optimization
stays in charge (precision, clipping, DDP, accumulation): the training step returns the
full-batch loss plus a term whose gradient is the accumulated tower gradient and whose
value is zero.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.encoders.features import Features
from vlp.step import Step

if TYPE_CHECKING:
    from vlp.model import VLPModule

GRADIENT_FIELDS = ("embedding", "pooled", "tokens")  # the float outputs of a tower the loss can read


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """``parts`` consecutive micro-batches; per-sample extras (tensors or lists of length B) are split too."""
    size = len(batch)
    bounds = [round(i * size / parts) for i in range(parts + 1)]

    def piece(value: Any, start: int, stop: int) -> Any:
        if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == size:
            return value[start:stop]
        if isinstance(value, list) and len(value) == size:
            return value[start:stop]
        return value

    return [
        Batch(batch.images[a:b], batch.input_ids[a:b], batch.attention_mask[a:b], {k: piece(v, a, b) for k, v in batch.extras.items()})
        for a, b in zip(bounds, bounds[1:])
    ]


class _RandomState:
    """torch's CPU generator and, when present, the current CUDA device's: saved and restored together."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


class CachedStep(Step):
    """A :class:`Step` whose views are computed micro-batch by micro-batch without a graph.

    Each requested view becomes one :class:`Features` over the whole batch whose float
    outputs are leaves requiring gradients; the random state before each micro-batch's
    forward is kept for the replay in :meth:`backward_towers`.
    """

    def __init__(self, *args: Any, micro_batches: list[Batch], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batches = micro_batches
        self.replays: dict[tuple[str, str], tuple[Callable, list[_RandomState]]] = {}

    def _get(self, tower: str, view: str) -> Features:
        key = (tower, view)
        views = self._views[tower]
        if key not in self._cache:
            if view not in views:
                raise KeyError(f'No {tower} view "{view}"; an objective must declare it in {tower}_views().')
            states, parts = [], []
            for micro in self.micro_batches:
                states.append(_RandomState())
                with torch.no_grad():
                    parts.append(views[view](self.encoder, micro))
            self.replays[key] = (views[view], states)
            self._cache[key] = _concatenated_leaves(parts)
        return self._cache[key]

    def backward_towers(self, feature_grads: dict[tuple[str, str], dict[str, Tensor]], parameters: list[Tensor]) -> list[Tensor | None]:
        """Re-run each micro-batch with a graph and pull its slice of the cached gradients into the towers.

        Returns the summed gradient of every parameter (None where none flows); the
        random state after the call is the one the no-graph pass left.
        """
        after = _RandomState()
        totals: list[Tensor | None] = [None] * len(parameters)
        start = 0
        for index, micro in enumerate(self.micro_batches):
            stop = start + len(micro)
            outputs, grads = [], []
            for key, (view_fn, states) in self.replays.items():
                states[index].restore()
                features = view_fn(self.encoder, micro)
                for name, grad in feature_grads[key].items():
                    outputs.append(getattr(features, name))
                    grads.append(grad[start:stop])
            start = stop
            if not outputs:
                continue
            micro_grads = torch.autograd.grad(outputs, parameters, grads, allow_unused=True)
            totals = [g if t is None else (t if g is None else t + g) for t, g in zip(totals, micro_grads)]
        after.restore()
        return totals


def _concatenated_leaves(parts: list[Features]) -> Features:
    """One :class:`Features` over all micro-batches; float outputs become leaves that collect gradients."""
    joined = {f.name: getattr(parts[0], f.name) for f in fields(Features)}
    for name in ("embedding", "pooled", "tokens", "mask"):
        value = torch.cat([getattr(p, name) for p in parts])
        joined[name] = value.requires_grad_(True) if name in GRADIENT_FIELDS and value.is_floating_point() else value
    return replace(parts[0], **joined)


def grad_cache_training_step(module: "VLPModule", batch: Batch, micro_batches: int) -> Tensor:
    """The full-batch loss, returned so that its backward gives the exact full-batch gradients."""
    micro = split_batch(batch, min(micro_batches, len(batch)))
    steps: list[CachedStep] = []

    def make_step(*args: Any, **kwargs: Any) -> CachedStep:
        steps.append(CachedStep(*args, micro_batches=micro, **kwargs))
        return steps[-1]

    loss = module._objective_losses(batch, "train", make_step)
    (step,) = steps
    leaves = [(key, name, getattr(features, name)) for key, features in step._cache.items() for name in GRADIENT_FIELDS]
    leaves = [(key, name, leaf) for key, name, leaf in leaves if leaf.requires_grad]
    grads = torch.autograd.grad(loss, [leaf for _, _, leaf in leaves], retain_graph=True, allow_unused=True)
    feature_grads: dict[tuple[str, str], dict[str, Tensor]] = {key: {} for key in step._cache}
    for (key, name, _), grad in zip(leaves, grads):
        if grad is not None:
            feature_grads[key][name] = grad
    parameters = [p for p in module.encoder.parameters() if p.requires_grad]
    tower_grads = step.backward_towers(feature_grads, parameters)
    carried = sum(((p * g).sum() for p, g in zip(parameters, tower_grads) if g is not None), torch.zeros((), device=loss.device))
    # The loss's own graph gives the objectives' parameters (and anything the loss reads past
    # the leaves, e.g. a projection of cached tokens) their gradients; ``carried`` adds the
    # towers' accumulated gradients and nothing to the value.
    return loss + (carried - carried.detach()).to(loss.dtype)
