"""What post-processing works on: query items and gallery items (METHODS.md "Track-level
re-ranking"; seed 001 §3.4, seed 003 §3.2).

Every query image is one item ("an independent tracklet which has one frame", 001). The
gallery items are its tracks at track level (images without a track id are one-image tracks)
and its images at image level. :class:`GalleryItems` maps images to items and back; every
per-item quantity (a track's feature, its mean camera / orientation feature, its mean attribute
probabilities, its camera, its time span) is computed from it once, and the image ranking tiles
each ranked item's images (:func:`tile_ranking`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from vreid.postprocess.checks import as_ids
from vreid.postprocess.kernels import squared_distances, topk

__all__ = ["Side", "PostprocessInputs", "GalleryItems", "ItemState", "tile_ranking"]

Level = Literal["track", "image"]


@dataclass
class Side:
    """Per-image arrays of the query or gallery side, rows in official list order."""

    image_ids: np.ndarray
    orders: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    trackids: np.ndarray
    timestamps: np.ndarray


@dataclass
class PostprocessInputs:
    """Everything the pipeline reads: loaded once (the actor), reused by every run.

    ``gallery_left_out`` holds the official ``order`` of gallery images left out as unreadable
    (``data.on_bad_image: skip``); ``num_gallery_official`` / ``num_query_official`` are the
    sizes of the official lists (None: the sides are the whole lists).
    """

    query: Side
    gallery: Side
    features: dict[str, tuple[np.ndarray, np.ndarray]]  # model -> (query, gallery) features
    extras: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # model -> column -> (q, g)
    tasks: dict[str, str]
    weights: dict[str, float]
    camera_classes: dict[str, list[int]] = field(default_factory=dict)  # camera model -> class camids
    gallery_left_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    num_gallery_official: int | None = None
    num_query_official: int | None = None

    @property
    def has_ground_truth(self) -> bool:
        return bool((self.query.pids >= 0).all() and (self.gallery.pids >= 0).all())


@dataclass(frozen=True)
class GalleryItems:
    """Gallery images grouped into items: ``item_of_image`` (G,) item index of every image,
    ``members`` (G,) image indices grouped by item (ascending within an item), ``starts``
    (T+1,) offsets of each item's members, ``track_ids`` (T,) the track id of each item
    (-1 for a one-image item of an image without a track)."""

    level: Level
    item_of_image: np.ndarray
    members: np.ndarray
    starts: np.ndarray
    track_ids: np.ndarray

    @classmethod
    def of_images(cls, num_gallery: int) -> GalleryItems:
        """Image level: every gallery image is its own item."""
        idx = np.arange(num_gallery, dtype=np.int64)
        return cls("image", idx, idx, np.arange(num_gallery + 1, dtype=np.int64), np.full(num_gallery, -1, np.int64))

    @classmethod
    def of_tracks(cls, trackids) -> GalleryItems:
        """Track level: one item per track id >= 0 (sorted by id), then one per image without
        a track (-1), in gallery order."""
        tid = as_ids("gallery trackids", trackids, "track id")
        tracked = tid >= 0
        ids, codes = np.unique(tid[tracked], return_inverse=True)
        item = np.empty(len(tid), np.int64)
        item[tracked] = codes.ravel()
        lone = np.flatnonzero(~tracked)
        item[lone] = len(ids) + np.arange(len(lone))
        members = np.argsort(item, kind="stable")
        n_items = len(ids) + len(lone)
        starts = np.searchsorted(item[members], np.arange(n_items + 1))
        return cls("track", item, members, starts.astype(np.int64),
                   np.concatenate([ids, np.full(len(lone), -1, np.int64)]))

    @property
    def num_items(self) -> int:
        return len(self.track_ids)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Per-item mean of per-image rows (G, ...) -> (T, ...), float64 accumulation."""
        v = np.asarray(values)
        if self.level == "image":
            return v
        sums = np.zeros((self.num_items, *v.shape[1:]), dtype=np.float64)
        np.add.at(sums, self.item_of_image, v)
        return (sums / self.sizes.reshape(-1, *([1] * (v.ndim - 1)))).astype(np.result_type(v.dtype, np.float32))

    def reduce(self, values: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        """Per-item ``ufunc.reduceat`` of a per-image 1-D array (e.g. np.fmin for a time span)."""
        v = np.asarray(values)
        return v if self.level == "image" else ufunc.reduceat(v[self.members], self.starts[:-1])

    def mode(self, labels: np.ndarray) -> np.ndarray:
        """Per-item most frequent integer label (ties: the smaller label); labels < 0 count as
        unknown and are used only when an item has no known label."""
        lab = np.asarray(labels, dtype=np.int64)
        if self.level == "image":
            return lab
        known = lab >= 0
        out = np.full(self.num_items, -1, np.int64)
        if known.any():
            pairs, counts = np.unique(np.stack([self.item_of_image[known], lab[known]], 1), axis=0,
                                      return_counts=True)
            order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # per item: most frequent, then smallest
            first = np.unique(pairs[order, 0], return_index=True)[1]
            out[pairs[order[first], 0]] = pairs[order[first], 1]
        return out


@dataclass
class ItemState:
    """The pipeline's state: query item features (Q, d), gallery item features (T, d), the
    gallery image features the items were built from (G, d: the within-track order), and the
    (Q, T) item distance once computed; ``ranked`` (Q, K) gallery images after a ranking step."""

    items: GalleryItems
    query: np.ndarray
    gallery: np.ndarray
    gallery_images: np.ndarray
    dist: np.ndarray | None = None
    ranked: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    _image_dist: tuple | None = field(default=None, repr=False)  # (query, gallery_images, (Q, G) distances)

    def image_distances(self) -> np.ndarray:
        """(Q, G) squared distances of the query features to the gallery image features, kept until
        either array is replaced: an ablation row before the tracklet step computes them and WF's
        first pass (001 eq. 4) reuses them instead of a second query x gallery product."""
        held = self.held_image_distances()
        if held is None:
            held = squared_distances(self.query, self.gallery_images)
            self._image_dist = (self.query, self.gallery_images, held)
        return held

    def held_image_distances(self) -> np.ndarray | None:
        """The distances of :meth:`image_distances` if they were computed for the current arrays."""
        d = self._image_dist
        return d[2] if d is not None and d[0] is self.query and d[1] is self.gallery_images else None

    def features_only(self) -> ItemState:
        """The same items and features, without distances, ranking or kept image distances (what the
        feature-state cache holds, and each run starts from)."""
        return ItemState(self.items, self.query, self.gallery, self.gallery_images, notes=dict(self.notes))


def tile_ranking(item_dist: np.ndarray, items: GalleryItems, query_features: np.ndarray,
                 gallery_images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ranking from item distances (001 §3.4 "tile tracks images"): items by ascending
    distance (ties: lower item index), each item's images in a row, nearest image to the query
    first (ties: lower gallery index); every image carries its item's distance. Only the items
    that reach the first ``k`` images are expanded. Returns ``(indices, distances)`` (Q, k)."""
    nq, n_items = item_dist.shape
    sizes = items.sizes
    # enough items to cover k images: at most k items (each holds >= 1 image)
    n_top = min(n_items, k)
    top_items, top_d = topk(item_dist, n_top)
    counts = sizes[top_items]
    covered = np.cumsum(counts, axis=1)
    need = np.minimum((covered < k).sum(axis=1) + 1, n_top)  # items per query up to k images
    indices = np.empty((nq, k), np.int64)
    distances = np.empty((nq, k), item_dist.dtype)
    for q in range(nq):  # per query: a few items, their images
        its = top_items[q, : need[q]]
        imgs = np.concatenate([items.members[items.starts[t]: items.starts[t + 1]] for t in its])
        slot = np.repeat(np.arange(len(its)), sizes[its])
        d_img = squared_distances(query_features[q: q + 1], gallery_images[imgs])[0]
        order = np.lexsort((imgs, d_img, slot))[:k]
        indices[q] = imgs[order]
        distances[q] = top_d[q, slot[order]]
    return indices, distances
