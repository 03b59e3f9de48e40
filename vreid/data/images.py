"""Image decoding with a clear error for unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def decode_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Fully decode an image to an HxWxC uint8 array; truncated or non-image files raise."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert(mode))  # writable: torch tensors are made from it
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image file") from None
    except (OSError, SyntaxError) as exc:
        raise ImageDecodeError(path, f"truncated or corrupt image ({exc})") from None
