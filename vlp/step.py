"""One training step's shared state: the batch, and tower outputs computed once on demand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from vlp.batch import Batch
from vlp.encoders.features import Features

if TYPE_CHECKING:
    from vlp.model import DualEncoder

# A view turns the batch into tower outputs, e.g. the full image, or the image with 50% of
# its patches dropped (FLIP), or the text with masked tokens (MLM).
ImageView = Callable[["DualEncoder", Batch], Features]
TextView = Callable[["DualEncoder", Batch], Features]


def full_image(encoder: "DualEncoder", batch: Batch) -> Features:
    return encoder.image_tower(batch.images)


def full_text(encoder: "DualEncoder", batch: Batch) -> Features:
    return encoder.text_tower(batch.input_ids, batch.attention_mask)


class Step:
    """What an objective receives: the batch plus cached, named views of both towers.

    ``step.image()`` runs the image tower on the batch the first time any objective
    asks and returns the cached result afterwards; ``step.image("masked")`` does the
    same for a view an objective declared (see ``Objective.image_views``).
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
        self._image_views = image_views
        self._text_views = text_views
        self._cache: dict[tuple[str, str], Features] = {}

    def image(self, view: str = "full") -> Features:
        return self._get("image", view, self._image_views)

    def text(self, view: str = "full") -> Features:
        return self._get("text", view, self._text_views)

    def _get(self, tower: str, view: str, views: dict) -> Features:
        key = (tower, view)
        if key not in self._cache:
            if view not in views:
                raise KeyError(f'No {tower} view "{view}"; an objective must declare it in {tower}_views().')
            self._cache[key] = views[view](self.encoder, self.batch)
        return self._cache[key]
