"""The training loop's parts without Ray: optimisers (parameter groups, the centers' own SGD,
centers identical across data-parallel workers), presets, and each hook on a TrainState."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from vreid.config import LossConfig, ModelConfig, StageConfig
from vreid.train.losses import ReIDLoss
from vreid.train.loop import (
    STATE_FILE,
    STATUS_FILE,
    Checkpointer,
    EpochMeter,
    LRSchedule,
    NaNGuard,
    StageData,
    TrainState,
    attribute_classes,
    lr_factor,
)
from vreid.train.optim import build_optimizers


class _Head(nn.Module):
    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.body = nn.Linear(dim, dim)
        self.neck = nn.Module()
        self.neck.classifier = nn.Linear(dim, classes, bias=False)


class _Model(nn.Module):
    """The attributes build_optimizers reads of a ReIDModel: ``head.neck.classifier``."""

    def __init__(self, dim: int = 2, classes: int = 2):
        super().__init__()
        self.head = _Head(dim, classes)


def _stage(**kw) -> StageConfig:
    return StageConfig(**kw)


# ----------------------------------------------------------------------------- optimisers


def test_centers_have_their_own_sgd_without_weight_decay():
    model, loss = _Model(), ReIDLoss(2, 2, center_weight=5e-4)
    opt = build_optimizers(model, loss, _stage(optimizer="adam", lr=3.5e-4, weight_decay=5e-4))
    in_model = {id(p) for g in opt.model.param_groups for p in g["params"]}
    assert id(loss.center.centers) not in in_model
    (group,) = opt.centers.param_groups
    assert group["params"] == [loss.center.centers]
    assert group["lr"] == LossConfig().center_lr == 0.5 and group["weight_decay"] == 0 and group["momentum"] == 0


def test_classifier_has_its_own_learning_rate_and_warm_up_starts_at_a_tenth():
    """001 §4.2: fine-tune at 1e-3 for the backbone, 2e-3 for the FC layer; warm-up from 0.1 x lr."""
    model = _Model()
    stage = _stage(lr=1e-3, classifier_lr=2e-3, warmup_epochs=10, milestones=[40])
    opt = build_optimizers(model, ReIDLoss(2, 2), stage)
    lrs = {id(p): g["lr"] for g in opt.model.param_groups for p in g["params"]}
    assert lrs[id(model.head.neck.classifier.weight)] == 2e-3 and lrs[id(model.head.body.weight)] == 1e-3
    s = TrainState(mcfg=ModelConfig(name="m", recipe=[stage]), train=pa.table({}), val=pa.table({"x": []}),
                   root=None, report=None, optim=opt)
    LRSchedule().before_epoch(s)
    assert sorted(g["lr"] for g in opt.model.param_groups) == pytest.approx([1e-4, 2e-4])
    s.epoch = 5
    LRSchedule().before_epoch(s)
    assert sorted(g["lr"] for g in opt.model.param_groups) == pytest.approx([5.5e-4, 1.1e-3])
    assert lr_factor(5, stage) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, stage) == 1.0


def test_centers_move_to_the_class_means():
    """Separable toy features: with the 1/β rescaling and lr 0.5 (BoT) the centers reach the class
    means (with the β-weighted gradient alone, 40 steps of lr 0.5 would move them by ~1e-3)."""
    torch.manual_seed(0)
    means = torch.tensor([[4.0, 0.0], [-4.0, 3.0]])
    labels = torch.arange(2).repeat_interleave(8)
    feats = means[labels] + 0.1 * torch.randn(16, 2)
    model, loss = _Model(), ReIDLoss(2, 2, center_weight=5e-4, triplet_weight=0.0)
    opt = build_optimizers(model, loss, _stage(optimizer="adam", lr=3.5e-4))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    start = (loss.center.centers.detach() - means).norm(dim=1)
    for _ in range(40):
        out = {"feat": feats, "feat_bn": feats, "logits": model.head.neck.classifier(feats)}
        total, _ = loss(out, labels)
        opt.zero_grad()
        total.backward()
        opt.step(scaler)
    class_means = torch.stack([feats[labels == c].mean(0) for c in range(2)])
    assert torch.allclose(loss.center.centers.detach(), class_means, atol=1e-3)
    assert (start > 1.0).all()


def _worker(rank: int, world: int, init: str, out_dir: str) -> None:
    import torch.distributed as dist

    from vreid.train.optim import broadcast_from_first

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # each worker draws other initial centers and other data
    model, loss = _Model(), ReIDLoss(2, 2, center_weight=5e-4, triplet_weight=0.0)
    broadcast_from_first(list(loss.parameters()))
    opt = build_optimizers(model, loss, _stage(optimizer="sgd", lr=0.1))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(5):
        labels = torch.randint(0, 2, (8,))
        feats = torch.randn(8, 2) + 3.0 * labels[:, None]
        out = {"feat": model.head.body(feats), "logits": torch.zeros(8, 2)}
        out["feat_bn"] = out["feat"]
        total, _ = loss(out, labels)
        opt.zero_grad()
        total.backward()
        opt.step(scaler)
    torch.save(loss.center.centers.detach().clone(), f"{out_dir}/centers{rank}.pt")
    dist.destroy_process_group()


def test_centers_identical_across_two_data_parallel_workers(tmp_path):
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2, join=True)
    c0, c1 = (torch.load(tmp_path / f"centers{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(c0, c1)
    torch.manual_seed(100)
    assert not torch.allclose(c0, ReIDLoss(2, 2, center_weight=5e-4).center.centers.detach())  # they moved


# ----------------------------------------------------------------------------- presets


def test_presets_give_the_papers_values():
    dmt = ModelConfig(name="m", preset="dmt2020", recipe=[{"name": "finetune", "epochs": 2}]).recipe
    assert [s.name for s in dmt] == ["mdl", "finetune"]
    assert (dmt[0].lr, dmt[0].warmup_factor, dmt[0].warmup_epochs, dmt[0].p, dmt[0].k) == (1e-2, 0.1, 10, 8, 12)
    assert dmt[0].synthetic_ids == 100 and dmt[0].loss.label_smoothing == 0.1
    assert (dmt[1].lr, dmt[1].classifier_lr, dmt[1].freeze_stages, dmt[1].epochs) == (1e-3, 2e-3, 2, 2)
    (bot,) = ModelConfig(name="m", preset="aic20_team44").recipe
    assert (bot.optimizer, bot.lr, bot.lr * bot.warmup_factor) == ("adam", 3.5e-4, pytest.approx(3.5e-5))
    assert (bot.loss.center_weight, bot.loss.triplet_margin, bot.loss.label_smoothing) == (5e-4, 0.5, 0.0)
    (dmt21,) = ModelConfig(name="m", preset="dmt2021").recipe
    assert dmt21.loss.label_smoothing == 0.0 and dmt21.loss.center_weight == 0.0 and dmt21.epochs == 80
    (ag,) = ModelConfig(name="m", preset="agnet", head="agnet").recipe
    assert (ag.loss.id_weight, ag.loss.color_weight, ag.loss.type_weight, ag.loss.verify_weight) == (0.5, 0.5, 0.5, 1)
    vn = ModelConfig(name="m", preset="vehiclenet").recipe
    assert vn[1].new_classifier and vn[1].epochs == 12 and vn[1].milestones == [8]
    with pytest.raises(ValueError, match="names none"):
        ModelConfig(name="m", preset="dmt2021", recipe=[{"name": "other"}])
    with pytest.raises(ValueError, match="head: agnet"):
        ModelConfig(name="m", preset="agnet")


def test_shipped_configs_use_the_presets():
    from vreid.config import load_config

    aic = {m.name: m for m in load_config("configs/aic21.yaml").models}
    assert aic["r101-ibn"].preset == "dmt2020" and aic["r101-ibn"].recipe[1].classifier_lr == 2e-3
    assert aic["resnext101-ibn"].preset == "dmt2021" and aic["densenet169-attr"].preset == "aic20_team44"
    veri = {m.name: m for m in load_config("configs/veri776.yaml").models}
    assert {m.preset for m in veri.values()} >= {"dmt2021", "aic20_team44", "agnet"}


# ----------------------------------------------------------------------------- hooks


def _state(tmp_path, reports, **kw) -> TrainState:
    mcfg = ModelConfig(name="m", recipe=[_stage(name="s1", epochs=2)])
    return TrainState(mcfg=mcfg, train=pa.table({}), val=pa.table({"x": []}), root=tmp_path,
                      report=lambda metrics, ckpt: reports.append((metrics, ckpt and sorted(
                          p.name for p in __import__("pathlib").Path(ckpt).iterdir()))), **kw)


def test_nan_guard_stops_and_reports_the_status(tmp_path):
    reports = []
    s = _state(tmp_path, reports)
    guard = NaNGuard()
    guard.after_loss(s, torch.tensor(1.0))
    assert s.stop is None
    guard.after_loss(s, torch.tensor(float("nan")))
    assert s.stop == "nan_loss"
    guard.after_epoch(s)
    assert reports == [({"epoch": 0, "status": "nan_loss"}, [STATUS_FILE])]
    s.rank = 1
    guard.after_epoch(s)
    assert reports[-1][1] is None  # only rank 0 writes the checkpoint


def test_epoch_meter_and_checkpointer(tmp_path):
    reports = []
    model = _Model()
    loss = ReIDLoss(2, 2, center_weight=5e-4)
    data = StageData(pa.table({}), np.zeros(2, dtype=np.int64), [7, 9], {}, 0, 0)
    s = _state(tmp_path, reports, model=model, criterion=loss, optim=build_optimizers(model, loss, _stage()),
               data=data, build_args={"backbone": "x"}, epoch=1)
    meter = EpochMeter()
    meter.before_epoch(s)
    meter.after_step(s, 4, {"id": torch.tensor(2.0)})
    meter.after_step(s, 4, {"id": torch.tensor(4.0)})
    meter.after_epoch(s)
    assert s.metrics["id"] == 3.0 and s.metrics["epoch"] == 1 and s.metrics["stage"] == "s1"
    s.metrics["val_mAP"] = float("nan")
    Checkpointer().after_epoch(s)
    metrics, files = reports[-1]
    assert files == ["history.json", STATE_FILE] and metrics["val_mAP"] is None
    assert s.history[-1]["id"] == 3.0


def test_checkpoint_holds_the_centers_optimiser(tmp_path, monkeypatch):
    saved = {}
    monkeypatch.setattr(torch, "save", lambda obj, path: saved.update(obj))
    model, loss = _Model(), ReIDLoss(2, 2, center_weight=5e-4)
    s = _state(tmp_path, [], model=model, criterion=loss, optim=build_optimizers(model, loss, _stage()),
               data=StageData(pa.table({}), np.zeros(1), [0, 1], {}, 0, 0))
    Checkpointer().after_epoch(s)
    assert saved["optimizer"]["centers"] is not None and "center.centers" in saved["criterion"]
    assert json.loads(saved["class_ids"]) == [0, 1]


def test_attribute_head_without_labels_names_the_dataset_and_field():
    rows = pa.table({"color": np.array([-1, -1], np.int16), "vtype": np.array([2, 0], np.int16)})
    with pytest.raises(ValueError, match=r"dataset 'x'.*colour labels.*'color'"):
        attribute_classes(rows, "attribute", "dataset 'x'")
    assert attribute_classes(rows, "bnneck", "dataset 'x'") == (0, 0)
    both = rows.set_column(0, "color", pa.array(np.array([3, 1], np.int16)))
    assert attribute_classes(both, "agnet", "d") == (4, 3)


def test_resume_continues_after_the_checkpoint_and_marks_the_epoch(tmp_path):
    import contextlib

    from vreid.train.loop import HISTORY_FILE, resume

    class _Checkpoint:
        def __init__(self, d):
            self.d = d

        def as_directory(self):
            return contextlib.nullcontext(str(self.d))

    torch.save({"epoch": 2, "stage": 0, "model": {}}, tmp_path / STATE_FILE)
    (tmp_path / HISTORY_FILE).write_text(json.dumps([{"epoch": e} for e in (-1, 0, 1, 2)]))
    s = _state(tmp_path, [])
    resume(s, _Checkpoint(tmp_path))
    assert (s.epoch, s.start_epoch, s.resumed_from, s.stop) == (3, 3, 2, None)
    assert [h["epoch"] for h in s.history] == [-1, 0, 1, 2] and s.resumed["epoch"] == 2
    model, loss = _Model(), ReIDLoss(2, 2)
    s.optim = build_optimizers(model, loss, _stage())
    meter = EpochMeter()
    meter.before_epoch(s)
    meter.after_epoch(s)
    assert s.metrics["resumed_from_epoch"] == 2
    (tmp_path / STATUS_FILE).write_text("{}")  # a run that stopped on a NaN loss stays stopped
    stopped = _state(tmp_path, [])
    resume(stopped, _Checkpoint(tmp_path))
    assert stopped.stop == "nan_loss"
