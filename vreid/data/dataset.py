"""A torch ``Dataset`` over manifest rows: decoded image, labels, and (optionally) the vehicle mask."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from vreid.data.images import ImageDecodeError, decode_image


def label_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids (pid, camid) to contiguous class indices 0..C-1; returns (labels, classes)."""
    classes, labels = np.unique(values, return_inverse=True)
    return labels.astype(np.int64), classes


class ReIDImageDataset(Dataset):
    """Rows of a manifest (already filtered to one split) as model inputs.

    ``__getitem__`` returns a dict with ``image`` (CHW float tensor after ``transform``),
    ``index`` and the per-row label arrays given in ``labels`` (name → int array). With
    ``background_p`` > 0 and masks present, the background is swapped with another image's
    (seed 000, background substitution) before the transform.
    """

    def __init__(self, table: pa.Table, root: str | Path, transform: Callable, labels: dict[str, np.ndarray],
                 background_p: float = 0.0, seed: int = 0):
        self.root = Path(root)
        self.paths = table.column("image_id").to_pylist()
        masks = table.column("mask_path").to_pylist()
        self.masks = [m if m else None for m in masks]
        self.transform = transform
        self.labels = {k: np.asarray(v) for k, v in labels.items()}
        for k, v in self.labels.items():
            if len(v) != len(self.paths):
                raise ValueError(f"labels['{k}'] has {len(v)} values for {len(self.paths)} images")
        self.background_p = background_p
        if background_p > 0 and not any(self.masks):
            raise ValueError("background substitution needs vehicle masks (mask_path) in the manifest")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, i: int) -> np.ndarray:
        try:
            return decode_image(self.root / self.paths[i])
        except ImageDecodeError as exc:
            raise ImageDecodeError(exc.path, f"{exc.reason} (image_id {self.paths[i]})") from None

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = self._image(i)
        if self.background_p > 0:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if self.masks[i] and rng.random() < self.background_p:
                from vreid.data.transforms import substitute_background

                j = int(rng.integers(len(self.paths)))
                mask = decode_image(self.root / self.masks[i], mode="L")
                other = self._image(j)
                img = substitute_background(img, mask, other, p=1.0)
        out = {"image": self.transform(img), "index": torch.tensor(i)}
        for k, v in self.labels.items():
            out[k] = torch.as_tensor(v[i])
        return out
