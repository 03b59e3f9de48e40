"""Optimiser construction for one recipe stage: parameter groups and the centers' own optimiser.

* The model's optimiser (SGD 001/003, Adam 000) over the trainable model parameters in two
  groups: the ID classifier (``classifier_lr``, 001 MDL fine-tune: 2e-3) and the rest (``lr``).
* The center loss centers (000) are not in it: BoT trains them with their own SGD (lr
  ``center_lr`` 0.5, no momentum, no weight decay) after rescaling their gradient by 1/β, so
  that β weights only the features' gradient. Under data-parallel training their gradient is
  all-reduced (averaged) first, as DDP does for the model's, so every worker keeps the same
  centers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vreid.config import StageConfig


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` in place over the workers of the default process group (no-op
    without one or with one worker)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for t in tensors:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())


def broadcast_from_first(tensors: list[torch.Tensor]) -> None:
    """Give every worker rank 0's values (e.g. the randomly initialised centers)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.broadcast(t.data, src=0)


@dataclass
class Optimizers:
    """The stage's optimisers; ``step`` applies one update of both (AMP-aware)."""

    model: torch.optim.Optimizer
    centers: torch.optim.Optimizer | None = None
    center_weight: float = 0.0

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        if self.centers is not None:
            self.centers.zero_grad(set_to_none=True)

    def set_lr_factor(self, factor: float) -> None:
        """Scale every model group's base lr (warm-up / decay); the centers' lr stays constant (BoT)."""
        for g in self.model.param_groups:
            g["lr"] = g["base_lr"] * factor

    def step(self, scaler: torch.amp.GradScaler) -> None:
        scaler.step(self.model)
        if self.centers is not None:
            scaler.unscale_(self.centers)
            grads = [p.grad for g in self.centers.param_groups for p in g["params"] if p.grad is not None]
            all_reduce_mean(grads)
            for grad in grads:
                grad.mul_(1.0 / self.center_weight)  # BoT: β weights the features' gradient only
            scaler.step(self.centers)
        scaler.update()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(),
                "centers": self.centers.state_dict() if self.centers is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.centers is not None and state.get("centers") is not None:
            self.centers.load_state_dict(state["centers"])


def build_optimizers(model: nn.Module, criterion: nn.Module, stage: StageConfig) -> Optimizers:
    """The optimisers of one stage for ``model`` (a ReIDModel) and ``criterion`` (a ReIDLoss).

    Frozen parameters are left out. Groups carry ``base_lr`` for :meth:`Optimizers.set_lr_factor`.
    """
    classifier = {id(p) for p in model.head.neck.classifier.parameters()}
    centers = list(criterion.center.parameters()) if getattr(criterion, "center", None) is not None else []
    center_ids = {id(p) for p in centers}
    trainable = [p for p in list(model.parameters()) + list(criterion.parameters())
                 if p.requires_grad and id(p) not in center_ids]
    groups = [{"params": [p for p in trainable if id(p) not in classifier], "base_lr": stage.lr},
              {"params": [p for p in trainable if id(p) in classifier], "base_lr": stage.classifier_lr or stage.lr}]
    groups = [dict(g, lr=g["base_lr"]) for g in groups if g["params"]]
    if stage.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum,
                                                     weight_decay=stage.weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    center_opt = torch.optim.SGD(centers, lr=stage.loss.center_lr) if centers else None
    return Optimizers(opt, center_opt, float(criterion.center_weight) if centers else 0.0)
