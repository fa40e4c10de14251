"""The dual encoder and the LightningModule that trains it with a list of objectives."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.evaluation.base import Evaluation
from vlp.grad_cache import grad_cache_training_step
from vlp.objectives.base import Objective
from vlp.optim import OptimConfig, build_optimizer, warmup_cosine
from vlp.parallel import shard_fsdp2
from vlp.registry import ConfigError
from vlp.step import Step, full_image, full_text


class DualEncoder(nn.Module):
    """An image tower and a text tower; evaluation only ever uses ``encode_*``."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings for images in [0, 1]."""
        return F.normalize(self.image_tower(images).embedding, dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """L2-normalised text embeddings for raw strings."""
        input_ids, attention_mask = self.text_tower.tokenize(texts)
        device = self.text_tower.projection.weight.device
        features = self.text_tower(input_ids.to(device), attention_mask.to(device))
        return F.normalize(features.embedding, dim=-1)


class VLPModule(L.LightningModule):
    """Pairs a :class:`DualEncoder` with weighted objectives; Lightning does the rest.

    ``state`` (the resolved config and the tokenizer) is stored in every checkpoint so
    ``vlp eval`` and ``--resume`` rebuild exactly this model. ``views`` are the YAML's
    named views (``model.views``), merged with those objectives declare.
    """

    def __init__(
        self,
        encoder: DualEncoder,
        objectives: dict[str, Objective],
        weights: dict[str, float],
        optim: OptimConfig,
        evaluations: list[Evaluation],
        state: dict[str, Any],
        views: dict[str, Any] | None = None,
        active: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.objectives = nn.ModuleDict(objectives)
        self.weights = weights
        self.active = active or {}
        self.optim_config = optim
        self.evaluations = evaluations
        self.vlp_state = state
        declared = {tower: {n: v for n, v in (views or {}).items() if v.tower == tower} for tower in ("image", "text")}
        self.image_views = _collect_views({"full": full_image}, [declared["image"]] + [o.image_views() for o in objectives.values()], "image")
        self.text_views = _collect_views({"full": full_text}, [declared["text"]] + [o.text_views() for o in objectives.values()], "text")
        _check_views_read(objectives, self.image_views, self.text_views)
        self.total_steps = 1
        self.objective_losses: dict[str, Tensor] = {}

    def configure_model(self) -> None:
        """Under ``trainer.strategy: fsdp2`` (ModelParallelStrategy) shard with FSDP2; a no-op otherwise."""
        if self._device_mesh is not None:
            shard_fsdp2(self, self._device_mesh)

    def on_fit_start(self) -> None:
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def _objective_losses(self, batch: Batch, stage: str, make_step: Callable[..., Step] = Step) -> Tensor:
        progress = min(1.0, self.global_step / self.total_steps)
        step = make_step(batch, self.encoder, self.image_views, self.text_views, progress)
        total = torch.zeros((), device=batch.images.device)
        training = stage == "train"
        if training:
            self.objective_losses.clear()  # an objective paused by its schedule reports nothing this step
        for name, objective in self.objectives.items():
            if not _is_active(self.active.get(name, (0.0, 1.0)), progress):
                continue
            outputs = objective(step)
            if training:  # read by the non-finite guard before the optimizer step (vlp.checkpointing)
                self.objective_losses[name] = outputs["loss"].detach()
            total = total + self.weights[name] * outputs["loss"]
            for key, value in outputs.items():
                self.log(f"{stage}/{name}/{key}", value, on_step=training, on_epoch=not training,
                         sync_dist=not training, batch_size=len(batch))
        self.log(f"{stage}/loss", total, prog_bar=True, on_step=training, on_epoch=not training,
                 sync_dist=not training, batch_size=len(batch))
        return total

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.optim_config.grad_cache_micro_batches > 1:
            return grad_cache_training_step(self, batch, self.optim_config.grad_cache_micro_batches)
        return self._objective_losses(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._objective_losses(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.trainer.datamodule is None:
            return
        for name, value in self.evaluate(self.trainer.datamodule, during_training=True).items():
            self.log(f"val/{name}", value, rank_zero_only=True)  # ranks > 0 get no metrics (see evaluation.base)

    @torch.no_grad()
    def evaluate(self, datamodule: Any, during_training: bool = False) -> dict[str, float]:
        """Run the configured evaluations on the datamodule's evaluation sets (during training: those set to ``every_validation``)."""
        was_training = self.encoder.training, self.objectives.training
        self.encoder.eval()
        self.objectives.eval()  # evaluations may use an objective's modules (a caption decoder)
        results: dict[str, float] = {}
        for evaluation in self.evaluations:
            if during_training and not evaluation.every_validation:
                continue
            results.update(evaluation(self.encoder, datamodule))
        self.encoder.train(was_training[0])
        self.objectives.train(was_training[1])
        return results

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step, then each objective's hook (e.g. an EMA teacher update), once per real step.

        Lightning calls this once per optimizer step (not per micro-batch under gradient
        accumulation). A step that float16 AMP's scaler skipped (non-finite gradients: it
        then lowers its scale) changed no weight, so the hooks do not run either.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = scaler.get_scale() if scaler is not None else None
        super().optimizer_step(*args, **kwargs)
        if scaler is not None and scaler.get_scale() < scale:
            return
        for objective in self.objectives.values():
            objective.after_optimizer_step(self.encoder)

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.optim_config
        optimizer = build_optimizer(self, config)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, config.warmup_steps, total, config.min_lr_ratio, config.schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def reloadable_keys(self) -> set[str]:
        """State keys that the config reloads by itself: frozen weights from a local pretrained source.

        Checkpoints leave them out, so a LoRA or locked-tower checkpoint holds only what
        trained (plus the config that names the base weights). An objective's frozen
        modules held with ``reloaded=True`` (a pretrained teacher) are left out too.
        """
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        keys = set()
        for tower_name in ("image_tower", "text_tower"):
            tower = getattr(self.encoder, tower_name)
            prefixes = tuple(f"encoder.{tower_name}.{part}" for part in tower.pretrained_parts)
            if prefixes:
                keys.update(k for k in self.state_dict() if k.startswith(prefixes) and k not in trainable)
        teachers = tuple(
            f"objectives.{name}.{module}."
            for name, objective in self.objectives.items()
            for module, reloaded in objective.frozen_modules().items()
            if reloaded
        )
        if teachers:
            keys.update(k for k in self.state_dict() if k.startswith(teachers))
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vlp"] = self.vlp_state
        reloadable = self.reloadable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in reloadable}

    def check_trained_state(self, state_dict: dict[str, Tensor]) -> None:
        """Only reloadable (frozen, pretrained) keys may be absent from a vlp checkpoint, and none extra."""
        own = set(self.state_dict())
        missing = own - set(state_dict) - self.reloadable_keys()
        unexpected = set(state_dict) - own
        if missing or unexpected:
            raise ConfigError(
                f"Checkpoint weights do not fit the configured model (missing: {sorted(missing)[:5]}, "
                f"unexpected: {sorted(unexpected)[:5]}); use it with the config it was trained with."
            )

    def load_trained_state(self, state_dict: dict[str, Tensor]) -> None:
        self.check_trained_state(state_dict)
        self.load_state_dict(state_dict, strict=False)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" not in checkpoint:
            return  # a distributed (FSDP2) checkpoint: the strategy has loaded the shards in place, strictly
        self.check_trained_state(checkpoint["state_dict"])
        self.strict_loading = False  # checked above: absent keys are exactly reloadable ones


def _is_active(span: tuple[float, float], progress: float) -> bool:
    """An objective runs from ``start`` (inclusive) to ``end`` (exclusive, except at the very end)."""
    start, end = span
    return start <= progress < end or progress == end == 1.0


def _check_views_read(objectives: dict[str, Objective], image_views: dict, text_views: dict) -> None:
    """Every view an objective is pointed at (``image_view:``/``text_view:``) must exist."""
    for name, objective in objectives.items():
        for tower, views in (("image", image_views), ("text", text_views)):
            view = getattr(objective, f"{tower}_view", "full")
            if view not in views:
                raise ConfigError(
                    f'Objective "{name}" reads {tower} view "{view}", which is not declared (known: {sorted(views)}); '
                    f"add it under model.views, e.g. {{{view}: {{name: patch_drop, mask_ratio: 0.5}}}}."
                )


def _collect_views(views: dict, declared: list[dict], tower: str) -> dict:
    """Merge views declared in YAML and by objectives; two different views under one name is an error.

    Views are compared by equality, so two objectives declaring the same settings (a
    frozen dataclass such as ``PatchDrop(0.5)``) share one forward pass per step.
    """
    merged = dict(views)
    for extra in declared:
        for name, function in extra.items():
            if name in merged and merged[name] != function:
                raise ConfigError(
                    f'Two objectives define different {tower} views named "{name}"; rename one of them.'
                )
            merged[name] = function
    return merged
