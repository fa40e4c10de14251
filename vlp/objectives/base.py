"""The objective interface: one class per method, registered by name, owning its parameters."""

from __future__ import annotations

from torch import Tensor, nn

from vlp.step import ImageView, Step, TextView


class Objective(nn.Module):
    """A training objective ("objective mixin").

    ``forward(step)`` returns a dict with a scalar ``"loss"`` (weighted and summed by
    the module) and any number of extra scalars, logged as metrics under the
    objective's name. Constructor arguments are the objective's YAML keys; their type
    hints are the schema. ``embed_dim`` is injected by the builder when declared.

    Objectives never call one another. Optional hooks:

    - ``image_views()`` / ``text_views()``: extra named views of the batch this objective
      needs (e.g. a masked image); each is computed once per step however many
      objectives read it.
    - ``after_optimizer_step(encoder)``: runs after each optimizer step (e.g. an EMA
      teacher update).
    """

    registry_name: str

    def forward(self, step: Step) -> dict[str, Tensor]:
        raise NotImplementedError

    def image_views(self) -> dict[str, ImageView]:
        return {}

    def text_views(self) -> dict[str, TextView]:
        return {}

    def after_optimizer_step(self, encoder: nn.Module) -> None:
        return None
