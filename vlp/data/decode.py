"""Turn raw files into an RGB image and clean captions, or raise :class:`BadSample` with its cause."""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Iterable

from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from vlp.data.quality import CAPTION_NOT_UTF8, EMPTY_CAPTION, MISSING_FILE, UNREADABLE_IMAGE, BadSample


def open_image(source: str | bytes, min_short_side: int | None = None) -> Image.Image:
    """Decode fully (so truncated files fail here, not later) and convert to RGB.

    With ``min_short_side``, a JPEG whose short side is at least twice that is decoded at
    the smallest of libjpeg's scales (1/2, 1/4, 1/8) that keeps its short side at or
    above it (PIL's draft mode): the bulk of a large photo's decoding cost is skipped.
    Other formats always decode in full.
    """
    if isinstance(source, str) and not os.path.isfile(source):
        raise BadSample(MISSING_FILE, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings from web images
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                if min_short_side is not None and min(image.size) >= 2 * min_short_side:
                    ratio = min_short_side / min(image.size)
                    image.draft(None, (math.ceil(image.size[0] * ratio), math.ceil(image.size[1] * ratio)))
                image.load()
                return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadSample(UNREADABLE_IMAGE, f"{source if isinstance(source, str) else '<bytes>'} ({error})") from error


def open_pixels(source: str | bytes, min_short_side: int | None = None) -> Tensor:
    """:func:`open_image` as uint8 (C, H, W) pixels stored (H, W, C), the layout torch's fast uint8 resize takes."""
    return pil_to_tensor(open_image(source, min_short_side))


def decode_text(raw: str | bytes) -> str:
    """UTF-8 text; bytes that are not UTF-8 (or surrogate-escaped strings) are a bad caption."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadSample(CAPTION_NOT_UTF8) from error
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadSample(CAPTION_NOT_UTF8) from error
    return raw


def clean_captions(raw: Iterable[str | bytes]) -> list[str]:
    """Stripped non-empty captions; none left is a bad sample."""
    captions = [text for text in (decode_text(r).strip() for r in raw) if text]
    if not captions:
        raise BadSample(EMPTY_CAPTION)
    return captions
