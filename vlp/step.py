"""One training step's shared state: the batch, and tower outputs computed once on demand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from vlp.batch import Batch
from vlp.distributed import Gathered, batch_sizes, gather_normalized
from vlp.encoders.features import Features

if TYPE_CHECKING:
    from vlp.model import DualEncoder

# A view turns the batch into tower outputs, e.g. the full image, or the image with 50% of
# its patches dropped (FLIP), or the text with masked tokens (MLM). A view is any callable;
# one whose rows are not one per sample (all captions of each image) sets
# ``one_per_sample = False`` so its gathers exchange their own sizes.
ImageView = Callable[["DualEncoder", Batch], Features]
TextView = Callable[["DualEncoder", Batch], Features]
Tower = Literal["image", "text"]


def full_image(encoder: "DualEncoder", batch: Batch) -> Features:
    return encoder.image_tower(batch.images)


def full_text(encoder: "DualEncoder", batch: Batch) -> Features:
    return encoder.text_tower(batch.input_ids, batch.attention_mask)


class Step:
    """What an objective receives: the batch plus cached, named views of both towers.

    ``step.image()`` runs the image tower on the batch the first time any objective
    asks and returns the cached result afterwards; ``step.image("masked")`` does the
    same for a named view (declared in YAML ``model.views`` or by an objective's
    ``image_views``). ``step.gathered("image", view)`` is that view's L2-normalised
    embedding, gathered across ranks once per step and shared by every objective that
    reads it; batch sizes are exchanged once per step.
    ``progress`` is the fraction of training done, for objectives with schedules.
    """

    def __init__(
        self,
        batch: Batch,
        encoder: "DualEncoder",
        image_views: dict[str, ImageView],
        text_views: dict[str, TextView],
        progress: float = 0.0,
    ) -> None:
        self.batch = batch
        self.encoder = encoder
        self.progress = progress
        self._views = {"image": image_views, "text": text_views}
        self._cache: dict[tuple[str, str], Features] = {}
        self._gathered: dict[tuple[str, str], Gathered] = {}
        self._batch_sizes: tuple[int, ...] | None = None

    def image(self, view: str = "full") -> Features:
        return self._get("image", view)

    def text(self, view: str = "full") -> Features:
        return self._get("text", view)

    def batch_sizes(self) -> tuple[int, ...]:
        """Every rank's batch size, exchanged on first use and then reused all step."""
        if self._batch_sizes is None:
            self._batch_sizes = tuple(batch_sizes(len(self.batch), self.batch.images.device))
        return self._batch_sizes

    def gathered(self, tower: Tower, view: str = "full") -> Gathered:
        """The view's normalised embeddings, this rank's and all ranks', computed once per step."""
        key = (tower, view)
        if key not in self._gathered:
            embedding = self._get(tower, view).embedding
            per_sample = getattr(self._views[tower][view], "one_per_sample", True)
            sizes = self.batch_sizes() if per_sample else None
            self._gathered[key] = gather_normalized(embedding, sizes)
        return self._gathered[key]

    def _get(self, tower: Tower, view: str) -> Features:
        key = (tower, view)
        if key not in self._cache:
            views = self._views[tower]
            if view not in views:
                raise KeyError(
                    f'No {tower} view "{view}" (known: {sorted(views)}); declare it under model.views '
                    f"or in an objective's {tower}_views()."
                )
            self._cache[key] = views[view](self.encoder, self.batch)
        return self._cache[key]
