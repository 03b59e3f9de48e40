"""The post-processing step registry (fast-reid style, without a global config).

Each step is one registered object in its own module of :mod:`vreid.postprocess.steps`: its
config model (the ``step:`` tag of ``postprocess.steps`` in YAML), what it needs (stores, ids,
timestamps), its stage (where it may stand in the order, and why), its paper source, and how it
applies at image and at track level. The config union (:data:`vreid.config.PostprocessStep`),
the order and needs checks of the pipeline and its dispatch all read this registry: adding a
step is adding one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from vreid.errors import InputError

if TYPE_CHECKING:
    from vreid.postprocess.items import ItemState, Level, PostprocessInputs
    from vreid.postprocess.knn import KNNGraph

__all__ = ["StepConfig", "Stage", "StoreNeed", "Step", "StepContext", "Registry", "STEPS", "register",
           "PostprocessError"]


class PostprocessError(InputError):
    """A post-processing config that cannot run on the given inputs."""


class StepConfig(BaseModel):
    """Base of every step's config model (unknown keys rejected, like every config section)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Stage(IntEnum):
    """Where a step may stand: stages never decrease along ``postprocess.steps``."""

    IMAGE_FEATURES = 0
    ITEMS = 1
    ITEM_FEATURES = 2
    RERANK = 3
    DISTANCE = 4
    RANKING = 5


STAGE_WHAT = {
    Stage.IMAGE_FEATURES: "changes the image features the gallery items are built from",
    Stage.ITEMS: "builds the gallery items (tracks) from the image features",
    Stage.ITEM_FEATURES: "changes the query and gallery item features",
    Stage.RERANK: "re-ranks from the item features (its k-NN graph and row maxima are feature distances)",
    Stage.DISTANCE: "adjusts the query x item distance after re-ranking",
    Stage.RANKING: "edits the final top-K image lists",
}


@dataclass(frozen=True)
class StoreNeed:
    """A store named by ``ensemble.<field>`` with ``task`` and one of ``columns`` (when given);
    ``optional``: the field may be unset (the step's own check decides)."""

    field: str
    task: str | None = None
    columns: tuple[str, ...] = ()
    optional: bool = False


@dataclass
class StepContext:
    """What a step reads besides its state: the inputs, the ensemble section, the level, the
    length of the final lists and the shared k-NN graph of the current item features
    (``graph(state, k)``, cached)."""

    inputs: PostprocessInputs
    ensemble: Any
    level: Level
    top_k: int
    graph: Callable[[ItemState, int], KNNGraph]


class Step:
    """One post-processing step. Subclasses set the class attributes and ``apply``."""

    name: ClassVar[str]
    config: ClassVar[type[StepConfig]]
    stage: ClassVar[Stage]
    source: ClassVar[str]
    image_level: ClassVar[str]
    track_level: ClassVar[str]
    order_reason: ClassVar[str] = ""  # why it cannot stand earlier (default: its stage's role)
    needs: ClassVar[tuple[StoreNeed, ...]] = ()

    def check(self, cfg: StepConfig, inputs: PostprocessInputs, ensemble: Any, level: Level) -> None:
        """Input checks beyond ``needs``, before any work (raise :class:`PostprocessError`)."""

    def graph_k(self, cfg: StepConfig, level: Level) -> int:
        """Neighbours of the shared k-NN graph this step reads (0: none)."""
        return 0

    def apply(self, cfg: StepConfig, state: ItemState, ctx: StepContext) -> ItemState:
        raise NotImplementedError


class Registry:
    """Name -> object, filled by the ``register`` decorator (fast-reid's ``Registry``)."""

    def __init__(self, name: str):
        self.name = name
        self._objects: dict[str, Any] = {}

    def register(self, obj: Any) -> Any:
        key = obj.name
        if key in self._objects:
            raise ValueError(f"{self.name}: '{key}' is registered twice")
        self._objects[key] = obj() if isinstance(obj, type) else obj
        return obj

    def get(self, name: str) -> Any:
        if name not in self._objects:
            raise KeyError(f"{self.name}: no '{name}' (registered: {sorted(self._objects)})")
        return self._objects[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._objects)

    def __iter__(self):
        return iter(self._objects.values())


STEPS = Registry("post-processing steps")
register = STEPS.register


def load_steps() -> Registry:
    """Import every step module (each registers itself) and return the registry."""
    import vreid.postprocess.steps  # noqa: F401

    return STEPS
