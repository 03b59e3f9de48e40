"""The per-worker training loop run by each model's ``TorchTrainer`` (Ray Train V2).

One call trains every stage of a model's recipe in order (BoT baseline, multi-domain learning
001, two-stage progressive learning 002), reporting per-epoch losses and validation mAP with a
checkpoint. Resumes from ``ray.train.get_checkpoint()`` after a worker failure or a rerun.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
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
    """Warm-up (linear from warmup_factor) then multi-step decay (BoT, 001/003)."""
    if epoch < stage.warmup_epochs:
        alpha = epoch / stage.warmup_epochs
        return stage.warmup_factor * (1 - alpha) + alpha
    return stage.gamma ** sum(1 for m in stage.milestones if epoch >= m)


def _attr_labels(rows: pa.Table) -> dict[str, np.ndarray]:
    return {"color": rows.column("color").to_numpy().astype(np.int64),
            "vtype": rows.column("vtype").to_numpy().astype(np.int64)}


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
    from vreid.postprocess.ensemble import pairwise_sq_distances

    parts = {}
    for split in ("query", "gallery"):
        rows = val.filter(pc.equal(val.column("split"), split))
        ds = ReIDImageDataset(rows, root, transform, labels={})
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
        parts[split] = (extract(model, loader, device), rows)
    (qf, q), (gf, g) = parts["query"], parts["gallery"]
    qf /= np.linalg.norm(qf, axis=1, keepdims=True) + 1e-12
    gf /= np.linalg.norm(gf, axis=1, keepdims=True) + 1e-12
    res = evaluate(pairwise_sq_distances(qf, gf), q.column("pid").to_numpy(), g.column("pid").to_numpy(),
                   q.column("camid").to_numpy(), g.column("camid").to_numpy())
    return {"val_mAP": float(res.mAP), "val_rank1": float(res.cmc[0])}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config`` holds the model config, the manifest path and loop settings."""
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    from vreid.data.transforms import build_test_transform, build_train_transform
    from vreid.models import build_model
    from vreid.train.losses import ReIDLoss, class_attribute_table
    from vreid.train.sampler import PKSampler

    mcfg = ModelConfig.model_validate(config["model"])
    torch.set_num_threads(config["num_threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    table = pq.read_table(config["manifest_path"])
    root = Path(config["dataset_root"])
    train = table.filter(pc.equal(table.column("split"), "train"))
    val = table.filter(pc.not_equal(table.column("split"), "train"))
    test_tf = build_test_transform(mcfg.input_size)
    validating = len(val) > 0 and mcfg.task == "reid"  # re-ID mAP means nothing for camera / orientation
    use_amp = bool(config["amp"]) and device.type == "cuda"

    # resume: global epoch index over all stages
    start_epoch, state, history = 0, None, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if (Path(d) / STATUS_FILE).is_file():  # the last run of this config stopped on a NaN loss
                ray.train.report({"status": "nan_loss"}, checkpoint=ckpt if rank == 0 else None)
                return
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
        start_epoch = int(state["epoch"]) + 1
    bounds = np.cumsum([0] + [s.epochs for s in mcfg.recipe])
    total = int(bounds[-1])
    model = None
    epoch = start_epoch
    while epoch < total:
        si = int(np.searchsorted(bounds, epoch, side="right") - 1)
        stage = mcfg.recipe[si]
        rows = stage_rows(train, stage)
        labels, class_ids = task_labels(rows, mcfg.task)
        num_classes = len(class_ids)
        attr = _attr_labels(rows)
        num_colors = int(max(attr["color"].max() + 1, 1)) if mcfg.head != "bnneck" else 0
        num_types = int(max(attr["vtype"].max() + 1, 1)) if mcfg.head != "bnneck" else 0
        if model is None:
            if state is not None:  # the architecture the checkpoint was saved with
                build_args = json.loads(state["build_args"])
                model = build_model(**{**build_args, "input_size": tuple(build_args["input_size"])})
                model.load_state_dict(state["model"])
            elif mcfg.init_from:  # e.g. UDA stage 2 starts from the stage-1 model
                from vreid.models.trained import load_trained_model

                model, meta = load_trained_model(mcfg.init_from)
                build_args = dict(meta["build_args"])
            else:
                build_args = dict(backbone=mcfg.backbone, head=mcfg.head, task=mcfg.task, num_classes=num_classes,
                                  input_size=list(mcfg.input_size), num_colors=num_colors, num_types=num_types,
                                  ibn=mcfg.ibn, last_stride=mcfg.last_stride, pooling=mcfg.pooling,
                                  embedding_dim=mcfg.embedding_dim)
                model = build_model(**{**build_args, "input_size": tuple(mcfg.input_size)},
                                    pretrained=mcfg.pretrained, pretrained_path=mcfg.pretrained_path)
            model.to(device)
        if epoch == 0 and rank == 0 and validating:  # the baseline every later epoch is compared with
            history.append({"epoch": -1, "stage": "init",
                            **validate(model, val, root, test_tf, device, config["eval_batch_size"])})
        if epoch == bounds[si] and stage.classifier_init == "centroids":
            model.reset_classifier(num_classes, class_centroids(model, rows, labels, root, test_tf, device,
                                                                config["eval_batch_size"]))
        elif epoch == bounds[si] and (si > 0 or mcfg.init_from) and (
                stage.new_classifier or num_classes != model.num_classes):
            model.reset_classifier(num_classes)  # two-stage learning (002): new classifier
        if model.num_classes != num_classes:
            raise RuntimeError(f"model '{mcfg.name}' stage '{stage.name}': checkpoint has "
                               f"{model.num_classes} classes, data has {num_classes}")
        model.freeze_stages(stage.freeze_stages)
        model.to(device)
        criterion = ReIDLoss(num_classes=num_classes, feat_dim=model.feat_dim, id_weight=stage.loss.id_weight,
                             label_smoothing=stage.loss.label_smoothing, triplet_weight=stage.loss.triplet_weight,
                             triplet_margin=stage.loss.triplet_margin, center_weight=stage.loss.center_weight,
                             color_weight=stage.loss.color_weight, type_weight=stage.loss.type_weight,
                             als_class_attributes=class_attribute_table(
                                 labels, np.stack([attr["color"], attr["vtype"]], 1), num_classes)
                             if stage.loss.als else None).to(device)
        params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
        if stage.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
        if state is not None and int(state["stage"]) == si and epoch > bounds[si]:
            opt.load_state_dict(state["optimizer"])
            criterion.load_state_dict(state["criterion"])
        state = None
        ddp = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        ds = ReIDImageDataset(rows, root, build_train_transform(
            mcfg.input_size, flip_p=stage.augment.flip_p, pad=stage.augment.pad, erase_p=stage.augment.erase_p,
            shrink_p=stage.augment.shrink_p, shrink_range=tuple(stage.augment.shrink_range)),
            labels={"label": labels, **attr}, background_p=stage.augment.background_p, seed=config["seed"])
        sampler = PKSampler(rows.column("pid").to_numpy(), p=stage.p, k=stage.k, num_replicas=world, rank=rank,
                            seed=config["seed"])
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=config["loader_workers"])
        for epoch in range(epoch, int(bounds[si + 1])):
            pause_point("train.epoch_start", model=mcfg.name, epoch=epoch, rank=rank)
            local = epoch - int(bounds[si])
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            for g in opt.param_groups:
                g["lr"] = stage.lr * lr_factor(local, stage)
            model.train()
            sums: dict[str, float] = {}
            n_batches, n_images, t0 = 0, 0, time.perf_counter()
            nan = False
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    out = ddp(images)
                    loss, parts = criterion(out, batch["label"].to(device), color=batch["color"].to(device),
                                            vtype=batch["vtype"].to(device))
                if not torch.isfinite(loss):
                    nan = True
                    break
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_batches += 1
                n_images += images.shape[0]
            seconds = time.perf_counter() - t0
            metrics: dict[str, Any] = {"epoch": epoch, "stage": stage.name, "lr": opt.param_groups[0]["lr"],
                                       "images_per_s": n_images * world / max(seconds, 1e-9)}
            metrics.update({k: v / max(n_batches, 1) for k, v in sums.items()})
            if ckpt is not None and epoch == start_epoch:
                metrics["resumed_from_epoch"] = start_epoch - 1
            if nan:  # stop this model only; the status travels in a checkpoint so the launcher sees it
                with tempfile.TemporaryDirectory() as tmp:
                    Path(tmp, STATUS_FILE).write_text(json.dumps({"status": "nan_loss", "epoch": epoch,
                                                                  "stage": stage.name}))
                    ray.train.report({"epoch": epoch, "status": "nan_loss"},
                                     checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
                return
            last = epoch == total - 1
            if rank == 0 and validating and (last or (epoch + 1) % config["eval_every"] == 0):
                metrics.update(validate(model, val, root, test_tf, device, config["eval_batch_size"]))
            history.append(metrics)
            if rank == 0:  # one progress line per epoch (not print: Train's patched print echoes it twice)
                shown = {k: metrics[k] for k in ("id", "triplet", "val_mAP") if k in metrics}
                sys.stdout.write(f"[{mcfg.name}] epoch {epoch + 1}/{total} ({stage.name}) "
                                 + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                                 + f" {metrics['images_per_s']:.0f} img/s\n")
                sys.stdout.flush()
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "criterion": criterion.state_dict(), "epoch": epoch, "stage": si,
                                "num_classes": num_classes,
                                "build_args": json.dumps({**build_args, "num_classes": num_classes}),
                                "class_ids": json.dumps(class_ids)},
                               os.path.join(tmp, STATE_FILE))
                    Path(tmp, HISTORY_FILE).write_text(json.dumps(history))
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                  for k, v in metrics.items()}, checkpoint=checkpoint)
        epoch += 1
