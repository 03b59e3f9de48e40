"""The per-worker training loop run by each model's ``TorchTrainer`` (Ray Train V2).

One call trains every stage of a model's recipe in order (BoT baseline, multi-domain learning
001, two-stage progressive learning 002), reporting per-epoch losses and validation mAP with a
checkpoint. Resumes from ``ray.train.get_checkpoint()`` after a worker failure or a rerun.

Structure (as fast-reid's trainer): :func:`run` is a short loop over stages, epochs and steps;
stage set-up is a few named functions (:func:`stage_data`, :func:`setup_model`,
:func:`prepare_classifier`, :func:`make_loader`, :func:`vreid.train.optim.build_optimizers`);
everything done around an epoch or a step is a :class:`Hook` (:class:`LRSchedule`,
:class:`NaNGuard`, :class:`EpochMeter`, :class:`Validation`, :class:`ProgressLog`,
:class:`Checkpointer`), each testable on its own with a :class:`TrainState`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from vreid.config import ModelConfig, StageConfig
from vreid.data.dataset import ReIDImageDataset, label_index
from vreid.fault_points import pause_point

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
STATUS_FILE = "status.json"


def stage_rows(train: pa.Table, stage: StageConfig) -> pa.Table:
    """Training rows of one stage: its domains; for synthetic, only the first N identities (001)."""
    rows = train.filter(pc.is_in(train.column("domain"), pa.array(stage.domains)))
    if stage.synthetic_ids is not None and "synthetic" in stage.domains:
        syn = rows.filter(pc.equal(rows.column("domain"), "synthetic"))
        keep = np.unique(syn.column("pid").to_numpy())[: stage.synthetic_ids]
        is_real = pc.equal(rows.column("domain"), "real")
        rows = rows.filter(pc.or_(is_real, pc.is_in(rows.column("pid"), pa.array(keep))))
    rows = rows.filter(pc.greater_equal(rows.column("pid"), 0))
    if rows.num_rows == 0:
        raise ValueError(f"stage '{stage.name}': no labelled training rows in domains {stage.domains}")
    return rows


def task_labels(rows: pa.Table, task: str) -> tuple[np.ndarray, list[int]]:
    """Class targets for the model's task: identity, camera, or orientation bin (003), and the
    raw id of each class (pid, camid, or bin index)."""
    if task in ("reid", "camera"):
        labels, classes = label_index(rows.column("pid" if task == "reid" else "camid").to_numpy())
        return labels, classes.tolist()
    deg = rows.column("orientation").to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(deg).any():
        raise ValueError("task 'orientation' needs orientation labels; the training rows have none")
    from vreid.models import ORIENTATION_BINS, orientation_to_bin

    return np.asarray(orientation_to_bin(deg, ORIENTATION_BINS), dtype=np.int64), list(range(ORIENTATION_BINS))


def lr_factor(epoch: int, stage: StageConfig) -> float:
    """Warm-up (linear from ``warmup_factor`` x lr, 000/001/003: 0.1) then multi-step decay."""
    if epoch < stage.warmup_epochs:
        alpha = epoch / stage.warmup_epochs
        return stage.warmup_factor * (1 - alpha) + alpha
    return stage.gamma ** sum(1 for m in stage.milestones if epoch >= m)


def attribute_classes(rows: pa.Table, head: str, dataset: str) -> tuple[int, int]:
    """(colours, types) an attribute / AGNet head predicts on these training rows; 0, 0 for
    ``bnneck``. A dataset without the labels is an error naming it and the field."""
    if head == "bnneck":
        return 0, 0
    sizes = []
    for column, what in (("color", "colour"), ("vtype", "type")):
        values = rows.column(column).to_numpy()
        if not (values >= 0).any():
            raise ValueError(f"head '{head}' predicts vehicle {what}, but the training rows of {dataset} have no "
                             f"{what} labels (manifest field '{column}' is -1 everywhere): use head: bnneck, or "
                             "a dataset with colour / type labels (VeRi-776, VehicleX, synth)")
        sizes.append(int(values.max()) + 1)
    return sizes[0], sizes[1]


def _attr_labels(rows: pa.Table) -> dict[str, np.ndarray]:
    return {"color": rows.column("color").to_numpy().astype(np.int64),
            "vtype": rows.column("vtype").to_numpy().astype(np.int64)}


@dataclass
class StageData:
    """The rows one stage trains on and their targets."""

    rows: pa.Table
    labels: np.ndarray  # class index per row
    class_ids: list[int]  # raw id of each class
    attr: dict[str, np.ndarray]  # per-row colour / type (-1 unknown)
    num_colors: int
    num_types: int

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


def stage_data(train: pa.Table, stage: StageConfig, mcfg: ModelConfig, dataset: str = "the dataset") -> StageData:
    """Rows, class targets and attribute labels of one stage (attribute sizes checked unless the
    model starts from a trained one, whose heads are fixed)."""
    rows = stage_rows(train, stage)
    labels, class_ids = task_labels(rows, mcfg.task)
    colors, types = (0, 0) if mcfg.init_from else attribute_classes(rows, mcfg.head, dataset)
    return StageData(rows, labels, class_ids, _attr_labels(rows), colors, types)


@torch.no_grad()
def extract(model: torch.nn.Module, loader, device) -> np.ndarray:
    """Test features of a model in eval mode (the ``feature`` output), float32."""
    model.eval()
    feats = [model(batch["image"].to(device))["feature"].float().cpu() for batch in loader]
    return torch.cat(feats).numpy()


@torch.no_grad()
def class_centroids(model, rows: pa.Table, labels: np.ndarray, root: Path, transform, device,
                    batch_size: int) -> torch.Tensor:
    """Classifier rows for pseudo-identities: each class's L2-normalised mean f_bn, the
    classifier's input, in eval mode (003 UDA)."""
    from vreid.train.pseudo import centroids

    model.eval()
    loader = torch.utils.data.DataLoader(ReIDImageDataset(rows, root, transform, labels={}), batch_size=batch_size)
    fbn = [model.head(model.backbone(b["image"].to(device)))["feat_bn"].float().cpu() for b in loader]
    return torch.from_numpy(centroids(torch.cat(fbn).numpy(), labels))


def validate(model, val: pa.Table, root: Path, transform, device, batch_size: int) -> dict[str, float]:
    from vreid.eval import evaluate
    from vreid.postprocess.kernels import squared_distances

    parts = {}
    for split in ("query", "gallery"):
        rows = val.filter(pc.equal(val.column("split"), split))
        ds = ReIDImageDataset(rows, root, transform, labels={})
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
        parts[split] = (extract(model, loader, device), rows)
    (qf, q), (gf, g) = parts["query"], parts["gallery"]
    qf /= np.linalg.norm(qf, axis=1, keepdims=True) + 1e-12
    gf /= np.linalg.norm(gf, axis=1, keepdims=True) + 1e-12
    res = evaluate(squared_distances(qf, gf), q.column("pid").to_numpy(), g.column("pid").to_numpy(),
                   q.column("camid").to_numpy(), g.column("camid").to_numpy())
    return {"val_mAP": float(res.mAP), "val_rank1": float(res.cmc[0])}


def setup_model(mcfg: ModelConfig, data: StageData, resumed: dict | None) -> tuple[torch.nn.Module, dict]:
    """The model and its build arguments: rebuilt from a checkpoint being resumed, loaded from
    ``init_from`` (e.g. UDA stage 2), or built from the config (``pretrained`` / ``pretrained_path``)."""
    from vreid.models import build_model

    if resumed is not None:  # the architecture the checkpoint was saved with
        build_args = json.loads(resumed["build_args"])
        model = build_model(**{**build_args, "input_size": tuple(build_args["input_size"])})
        model.load_state_dict(resumed["model"])
        return model, build_args
    if mcfg.init_from:
        from vreid.models.trained import load_trained_model

        model, meta = load_trained_model(mcfg.init_from)
        return model, dict(meta["build_args"])
    build_args = dict(backbone=mcfg.backbone, head=mcfg.head, task=mcfg.task, num_classes=data.num_classes,
                      input_size=list(mcfg.input_size), num_colors=data.num_colors, num_types=data.num_types,
                      ibn=mcfg.ibn, last_stride=mcfg.last_stride, pooling=mcfg.pooling,
                      embedding_dim=mcfg.embedding_dim)
    model = build_model(**{**build_args, "input_size": tuple(mcfg.input_size)},
                        pretrained=mcfg.pretrained, pretrained_path=mcfg.pretrained_path)
    return model, build_args


def prepare_classifier(model, stage: StageConfig, data: StageData, *, first_epoch_of_stage: bool,
                       carried_over: bool, centroid_fn: Callable[[], torch.Tensor]) -> None:
    """At a stage's first epoch: classifier rows from class centroids (003 UDA), or a new classifier
    when the stage asks (002 stage II) or the classes changed after a previous stage / ``init_from``
    (``carried_over``). Raises when the model's classes still differ from the data's."""
    if first_epoch_of_stage and stage.classifier_init == "centroids":
        model.reset_classifier(data.num_classes, centroid_fn())
    elif first_epoch_of_stage and carried_over and (stage.new_classifier or data.num_classes != model.num_classes):
        model.reset_classifier(data.num_classes)
    if model.num_classes != data.num_classes:
        raise RuntimeError(f"stage '{stage.name}': checkpoint has {model.num_classes} classes, "
                           f"data has {data.num_classes}")


def make_loader(mcfg: ModelConfig, stage: StageConfig, data: StageData, root: Path, *, seed: int,
                world: int = 1, rank: int = 0, workers: int = 0):
    """(dataset, PK sampler, DataLoader) of one stage's training rows with its augmentation."""
    from vreid.data.transforms import build_train_transform
    from vreid.train.sampler import PKSampler

    aug = stage.augment
    ds = ReIDImageDataset(data.rows, root, build_train_transform(
        mcfg.input_size, flip_p=aug.flip_p, pad=aug.pad, erase_p=aug.erase_p, shrink_p=aug.shrink_p,
        shrink_range=tuple(aug.shrink_range)), labels={"label": data.labels, **data.attr},
        background_p=aug.background_p, seed=seed)
    sampler = PKSampler(data.rows.column("pid").to_numpy(), p=stage.p, k=stage.k, num_replicas=world, rank=rank,
                        seed=seed)
    return ds, sampler, torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers)


# ----------------------------------------------------------------------------- state and hooks


@dataclass
class TrainState:
    """What the loop and its hooks share. ``report(metrics, checkpoint_dir | None)`` hands an
    epoch's metrics (and a checkpoint directory, rank 0) to Ray Train or, in tests, to a list."""

    mcfg: ModelConfig
    train: pa.Table
    val: pa.Table
    root: Path
    report: Callable[[dict[str, Any], str | None], None]
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 64
    loader_workers: int = 0
    use_amp: bool = False
    dataset: str = "the dataset"
    epoch: int = 0
    start_epoch: int = 0
    resumed: dict | None = None  # the checkpoint state being resumed (until its stage is set up)
    resumed_from: int | None = None  # the last epoch of the checkpoint resumed
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    build_args: dict = field(default_factory=dict)
    stage_index: int = 0
    data: StageData | None = None
    criterion: Any = None
    optim: Any = None
    net: Any = None  # the model, DDP-wrapped on several workers
    scaler: Any = None
    sampler: Any = None
    dataset_obj: Any = None
    loader: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    stop: str | None = None

    @property
    def bounds(self) -> np.ndarray:
        """First global epoch of each stage, then the total."""
        return np.cumsum([0] + [s.epochs for s in self.mcfg.recipe])

    @property
    def total_epochs(self) -> int:
        return int(self.bounds[-1])

    @property
    def stage(self) -> StageConfig:
        return self.mcfg.recipe[self.stage_index]

    @property
    def local_epoch(self) -> int:
        return self.epoch - int(self.bounds[self.stage_index])

    @property
    def validating(self) -> bool:  # re-ID mAP means nothing for camera / orientation models
        return len(self.val) > 0 and self.mcfg.task == "reid"


class Hook:
    """Called by :func:`run` around stages, epochs and steps (fast-reid's ``HookBase``)."""

    def before_stage(self, s: TrainState) -> None: ...

    def before_epoch(self, s: TrainState) -> None: ...

    def after_loss(self, s: TrainState, loss: torch.Tensor) -> None:
        """After the forward pass, before backward; setting ``s.stop`` skips the step and ends."""

    def after_step(self, s: TrainState, batch_size: int, parts: dict[str, torch.Tensor]) -> None: ...

    def after_epoch(self, s: TrainState) -> None: ...


class LRSchedule(Hook):
    """Each epoch: every parameter group at its base lr x :func:`lr_factor` (warm-up, decay)."""

    def before_epoch(self, s: TrainState) -> None:
        s.optim.set_lr_factor(lr_factor(s.local_epoch, s.stage))


class NaNGuard(Hook):
    """A non-finite loss stops this model only: the status travels in a checkpoint (rank 0) so the
    launcher sees it, and a rerun of the same config stops at once."""

    def after_loss(self, s: TrainState, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            s.stop = "nan_loss"

    def after_epoch(self, s: TrainState) -> None:
        if s.stop != "nan_loss":
            return
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, STATUS_FILE).write_text(json.dumps({"status": "nan_loss", "epoch": s.epoch,
                                                          "stage": s.stage.name}))
            s.report({"epoch": s.epoch, "status": "nan_loss"}, tmp if s.rank == 0 else None)


class EpochMeter(Hook):
    """Per-epoch metrics: the mean of each loss part, images/s over all workers, the lr."""

    def before_epoch(self, s: TrainState) -> None:
        self.sums: dict[str, float] = {}
        self.batches, self.images, self.t0 = 0, 0, time.perf_counter()

    def after_step(self, s: TrainState, batch_size: int, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.batches += 1
        self.images += batch_size

    def after_epoch(self, s: TrainState) -> None:
        seconds = time.perf_counter() - self.t0
        s.metrics = {"epoch": s.epoch, "stage": s.stage.name, "lr": s.optim.model.param_groups[0]["lr"],
                     "images_per_s": self.images * s.world / max(seconds, 1e-9),
                     **{k: v / max(self.batches, 1) for k, v in self.sums.items()}}
        if s.resumed_from is not None and s.epoch == s.start_epoch:
            s.metrics["resumed_from_epoch"] = s.resumed_from


class Validation(Hook):
    """Validation mAP on rank 0: once before the first epoch (the baseline later epochs are
    compared with), then every ``eval_every`` epochs and after the last."""

    def before_stage(self, s: TrainState) -> None:
        if s.epoch == 0 and s.rank == 0 and s.validating:
            s.history.append({"epoch": -1, "stage": "init", **self._validate(s)})

    def after_epoch(self, s: TrainState) -> None:
        last = s.epoch == s.total_epochs - 1
        if s.stop is None and s.rank == 0 and s.validating and (last or (s.epoch + 1) % s.eval_every == 0):
            s.metrics.update(self._validate(s))

    @staticmethod
    def _validate(s: TrainState) -> dict[str, float]:
        from vreid.data.transforms import build_test_transform

        return validate(s.model, s.val, s.root, build_test_transform(s.mcfg.input_size), s.device,
                        s.eval_batch_size)


class ProgressLog(Hook):
    """One progress line per epoch on rank 0 (not print: Train's patched print echoes it twice)."""

    def after_epoch(self, s: TrainState) -> None:
        if s.stop is not None or s.rank != 0:
            return
        m = s.metrics
        shown = {k: m[k] for k in ("id", "triplet", "verify", "val_mAP") if k in m}
        sys.stdout.write(f"[{s.mcfg.name}] epoch {s.epoch + 1}/{s.total_epochs} ({s.stage.name}) "
                         + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                         + f" {m['images_per_s']:.0f} img/s\n")
        sys.stdout.flush()


class Checkpointer(Hook):
    """After each epoch: the epoch's metrics join the history and are reported with a checkpoint
    (rank 0) holding model, optimisers, loss state (the centers), epoch, stage and history."""

    def after_epoch(self, s: TrainState) -> None:
        if s.stop is not None:
            return
        s.history.append(s.metrics)
        with tempfile.TemporaryDirectory() as tmp:
            if s.rank == 0:
                torch.save({"model": s.model.state_dict(), "optimizer": s.optim.state_dict(),
                            "criterion": s.criterion.state_dict(), "epoch": s.epoch, "stage": s.stage_index,
                            "num_classes": s.data.num_classes,
                            "build_args": json.dumps({**s.build_args, "num_classes": s.data.num_classes}),
                            "class_ids": json.dumps(s.data.class_ids)}, os.path.join(tmp, STATE_FILE))
                Path(tmp, HISTORY_FILE).write_text(json.dumps(s.history))
            s.report({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                      for k, v in s.metrics.items()}, tmp if s.rank == 0 else None)


def default_hooks() -> list[Hook]:
    """The hooks of a training run, in the order they are called."""
    return [LRSchedule(), NaNGuard(), EpochMeter(), Validation(), ProgressLog(), Checkpointer()]


# ----------------------------------------------------------------------------- the loop


def setup_stage(s: TrainState) -> None:
    """Data, model (first stage or resume), classifier, freezing, loss, optimisers and loader of the
    stage that ``s.epoch`` falls in; resumes optimiser and loss state inside that stage."""
    from vreid.data.transforms import build_test_transform
    from vreid.train.losses import ReIDLoss
    from vreid.train.optim import broadcast_from_first, build_optimizers

    s.stage_index = int(np.searchsorted(s.bounds, s.epoch, side="right") - 1)
    stage, first = s.stage, s.epoch == int(s.bounds[s.stage_index])
    s.data = data = stage_data(s.train, stage, s.mcfg, s.dataset)
    if s.model is None:
        s.model, s.build_args = setup_model(s.mcfg, data, s.resumed)
        s.model.to(s.device)
    prepare_classifier(s.model, stage, data, first_epoch_of_stage=first,
                       carried_over=s.stage_index > 0 or bool(s.mcfg.init_from),
                       centroid_fn=lambda: class_centroids(s.model, data.rows, data.labels, s.root,
                                                           build_test_transform(s.mcfg.input_size), s.device,
                                                           s.eval_batch_size))
    s.model.freeze_stages(stage.freeze_stages)
    s.model.to(s.device)
    s.criterion = ReIDLoss.from_config(stage.loss, data.num_classes, s.model.feat_dim).to(s.device)
    s.optim = build_optimizers(s.model, s.criterion, stage)
    if s.resumed is not None and int(s.resumed["stage"]) == s.stage_index and not first:
        s.optim.load_state_dict(s.resumed["optimizer"])
        s.criterion.load_state_dict(s.resumed["criterion"])
    s.resumed = None
    broadcast_from_first(list(s.criterion.parameters()))  # the same centers on every worker
    if s.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        s.net = DistributedDataParallel(s.model, find_unused_parameters=True)
    else:
        s.net = s.model
    s.scaler = torch.amp.GradScaler("cuda", enabled=s.use_amp)
    s.dataset_obj, s.sampler, s.loader = make_loader(s.mcfg, stage, data, s.root, seed=s.seed, world=s.world,
                                                     rank=s.rank, workers=s.loader_workers)


def train_one_epoch(s: TrainState, hooks: list[Hook]) -> None:
    s.sampler.set_epoch(s.epoch)
    s.dataset_obj.set_epoch(s.epoch)
    s.model.train()
    for batch in s.loader:
        images = batch["image"].to(s.device, non_blocking=True)
        with torch.autocast(s.device.type, enabled=s.use_amp):
            out = s.net(images)
            loss, parts = s.criterion(out, batch["label"].to(s.device), color=batch["color"].to(s.device),
                                      vtype=batch["vtype"].to(s.device))
        for h in hooks:
            h.after_loss(s, loss)
        if s.stop is not None:
            return
        s.optim.zero_grad()
        s.scaler.scale(loss).backward()
        s.optim.step(s.scaler)
        for h in hooks:
            h.after_step(s, images.shape[0], parts)


def run(s: TrainState, hooks: list[Hook]) -> None:
    """Every remaining epoch of every stage, from ``s.epoch``; stops early when a hook sets ``s.stop``."""
    while s.epoch < s.total_epochs:
        setup_stage(s)
        for h in hooks:
            h.before_stage(s)
        for s.epoch in range(s.epoch, int(s.bounds[s.stage_index + 1])):
            pause_point("train.epoch_start", model=s.mcfg.name, epoch=s.epoch, rank=s.rank)
            for h in hooks:
                h.before_epoch(s)
            train_one_epoch(s, hooks)
            for h in hooks:
                h.after_epoch(s)
            if s.stop is not None:
                return
        s.epoch += 1


def resume(s: TrainState, checkpoint) -> None:
    """Continue from a Ray Train checkpoint: the epoch after it, its history and state; a
    checkpoint carrying a NaN status ends the run (``s.stop``)."""
    with checkpoint.as_directory() as d:
        if (Path(d) / STATUS_FILE).is_file():  # the last run of this config stopped on a NaN loss
            s.stop = "nan_loss"
            return
        s.resumed = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        s.history = json.loads((Path(d) / HISTORY_FILE).read_text())
    s.epoch = s.start_epoch = int(s.resumed["epoch"]) + 1
    s.resumed_from = s.start_epoch - 1


def newest_persisted(run_path: str | None, after_epoch: int) -> Path | None:
    """The newest checkpoint in the run's storage that is complete and later than ``after_epoch``
    (the epoch of the checkpoint Ray Train hands back), or None.

    Train V2 registers a reported checkpoint only when its controller next polls the workers (every
    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s): a worker group that dies in between (its node lost
    right after an epoch) restarts from the checkpoint before, and the finished epoch would be
    trained again. Every rank reads the same storage, so all resume from the same epoch."""
    if not run_path or "://" in run_path or not Path(run_path).is_dir():
        return None
    best, best_epoch = None, after_epoch
    for d in Path(run_path).glob("checkpoint_*"):
        if (d / STATUS_FILE).exists():
            continue
        try:
            epoch = int(torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)["epoch"])
            json.loads((d / HISTORY_FILE).read_text())
        except Exception:  # noqa: BLE001 - a checkpoint cut short while it was written: not one
            continue
        if epoch > best_epoch:
            best, best_epoch = d, epoch
    return best


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config`` holds the model config, the manifest path and loop settings."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["num_threads"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    table = pq.read_table(config["manifest_path"])

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir else None)

    s = TrainState(
        mcfg=ModelConfig.model_validate(config["model"]),
        train=table.filter(pc.equal(table.column("split"), "train")),
        val=table.filter(pc.not_equal(table.column("split"), "train")),
        root=Path(config["dataset_root"]), report=report, rank=ctx.get_world_rank(), world=ctx.get_world_size(),
        device=device, seed=config["seed"], eval_every=config["eval_every"],
        eval_batch_size=config["eval_batch_size"], loader_workers=config["loader_workers"],
        use_amp=bool(config["amp"]) and device.type == "cuda", dataset=config.get("dataset", "the dataset"))
    checkpoint = ray.train.get_checkpoint()
    registered = -1
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / STATE_FILE).is_file():
                registered = int(torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)["epoch"])
    if checkpoint is None or registered >= 0:
        newer = newest_persisted(config.get("run_path"), registered)
        if newer is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(newer))
    if checkpoint is not None:
        resume(s, checkpoint)
        if s.stop is not None:  # report the NaN status again so the launcher sees it
            ray.train.report({"status": s.stop}, checkpoint=checkpoint if s.rank == 0 else None)
            return
    run(s, default_hooks())
