"""The objective interface: one class per method, registered by name, owning its parameters."""

from __future__ import annotations

from torch import Tensor, nn

from vlp.step import ImageView, Step, TextView


class Objective(nn.Module):
    """A training objective ("objective mixin").

    ``forward(step)`` returns a dict with a scalar ``"loss"`` (weighted and summed by
    the module) and any number of extra scalars, logged as metrics under the
    objective's name. Constructor arguments are the objective's YAML keys; their type
    hints are the schema. Parameters named like a field of :class:`vlp.needs.ModelInfo`
    (``embed_dim``, ``image_width``, ``text_width``, ``vocab_size``, ``special_tokens``,
    ``patch_size``, ``patch_grid``, ``num_prefix_tokens``, ``encoder``, ...) are not YAML
    keys: the builder passes them, after the towers exist and before optimizers do.

    Modules assigned in ``__init__`` train, shard, checkpoint, resume and export with the
    model. A teacher is held with :meth:`hold_frozen`. Objectives never call one another.
    Optional hooks:

    - ``image_views()`` / ``text_views()``: extra named views of the batch this objective
      needs (e.g. a masked image); each is computed once per step however many
      objectives read it. Views can also be declared in YAML (``model.views``).
    - ``after_optimizer_step(encoder)``: runs after each optimizer step (e.g. an EMA
      teacher update).
    """

    registry_name: str

    def __init__(self) -> None:
        super().__init__()
        self._frozen: dict[str, bool] = {}

    def forward(self, step: Step) -> dict[str, Tensor]:
        raise NotImplementedError

    def image_views(self) -> dict[str, ImageView]:
        return {}

    def text_views(self) -> dict[str, TextView]:
        return {}

    def after_optimizer_step(self, encoder: nn.Module) -> None:
        return None

    def hold_frozen(self, name: str, module: nn.Module, reloaded: bool) -> nn.Module:
        """Keep ``module`` as attribute ``name``, frozen: no gradients, never given to the
        optimizer or unfrozen by the builder, always in eval mode.

        ``reloaded=True``: ``__init__`` rebuilds it from its source (a local file named in
        the YAML), so checkpoints leave it out and ``vlp eval``/``--resume`` reload it.
        ``reloaded=False`` (an EMA teacher): saved in checkpoints and restored from them.
        """
        module.requires_grad_(False)
        module.eval()
        setattr(self, name, module)
        self._frozen[name] = reloaded
        return module

    def frozen_modules(self) -> dict[str, bool]:
        """Attribute names of frozen modules, each mapped to whether it is reloaded from its source."""
        return dict(self._frozen)

    def set_trainable(self, trainable: bool) -> None:
        """Train (or lock) the objective's own parameters; frozen modules stay frozen."""
        frozen = tuple(f"{name}." for name in self._frozen)
        for name, parameter in self.named_parameters():
            if not name.startswith(frozen):
                parameter.requires_grad_(trainable)

    def train(self, mode: bool = True) -> "Objective":
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self
