"""UDA stage 2 (001 Identity Mining, 003 DBSCAN UDA): pseudo-label the test split with each
stage-1 re-ID model's features, then fine-tune a copy of the model on its labels through the same
Ray Train launcher. Ray stays in the launcher; this module reads stores and builds tables."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vreid.config import DBSCANSetting, ModelConfig, RunConfig
from vreid.data import split_table
from vreid.features.store import load_features, store_uri, without_skipped
from vreid.models.trained import read_trained_meta
from vreid.train import pseudo

log = logging.getLogger("vreid.uda")


@dataclass
class PseudoLabels:
    """The labels one stage-2 model trains on."""

    model: ModelConfig  # the stage-2 model
    source: str  # the stage-1 model whose features were clustered
    method: str  # e.g. "dbscan eps=0.55 min_samples=10"
    rows: pa.Table  # test query + gallery rows, manifest order
    labels: np.ndarray  # (N,) int64, -1 = unlabelled


def source_models(cfg: RunConfig) -> list[ModelConfig]:
    """The stage-1 models stage 2 fine-tunes: ``uda.models`` or every re-ID model."""
    names = cfg.uda.models
    return [m for m in cfg.models if m.task == "reid" and (names is None or m.name in names)]


def stage2_model(cfg: RunConfig, source: ModelConfig, name: str) -> ModelConfig:
    """``source`` started from its stage-1 weights with the UDA recipe (one stage)."""
    return ModelConfig.model_validate({
        **source.model_dump(mode="json"), "name": name, "pretrained": False, "pretrained_path": None,
        "preset": None,
        "init_from": f"models/{source.name}",  # relative to the run: a moved run stays complete
        "recipe": [cfg.uda.stage.model_dump(mode="json")]})


def _dbscan_name(setting: DBSCANSetting) -> str:
    return f"dbscan eps={setting.eps:g} min_samples={setting.min_samples}"


def _method_names(cfg: RunConfig) -> list[str]:
    u = cfg.uda
    if u.method == "dbscan":
        return [_dbscan_name(s) for s in u.dbscan]
    return [u.method]


def stage2_names(cfg: RunConfig, source: str) -> list[str]:
    n = len(_method_names(cfg))
    return [f"{source}-uda" if n == 1 else f"{source}-uda{i}" for i in range(n)]


def stage1_test_features(cfg: RunConfig, manifest: pa.Table, model: str) -> tuple[pa.Table, np.ndarray, int]:
    """The test query + gallery rows (manifest order), the stage-1 store's features for them and
    the number of queries."""
    sha = read_trained_meta(Path(cfg.run_dir) / "models" / model)["sha256"]
    uri = store_uri(cfg.store_root, model, "test")
    manifest, _ = without_skipped(manifest, [uri])  # images the extraction skipped are not labelled
    q, g = split_table(manifest, "query"), split_table(manifest, "gallery")
    qf, _, _ = load_features(uri, manifest, "query", expect_sha256=sha)
    gf, _, _ = load_features(uri, manifest, "gallery", expect_sha256=sha)
    return pa.concat_tables([q, g]), np.concatenate([qf, gf]), q.num_rows


def label_by_method(cfg: RunConfig, rows: pa.Table, features: np.ndarray, n_query: int) -> dict[str, np.ndarray]:
    """Pseudo-labels of one model's clustering features by the chosen labeller; when the split has
    ground truth, by every labeller (the DBSCAN settings, Identity Mining, k-means with the known
    number of identities) so that their quality can be compared."""
    u = cfg.uda
    pids = rows.column("pid").to_numpy()
    compare = bool((pids >= 0).all())
    num_ids = u.kmeans_num_ids or (len(np.unique(pids)) if compare else None)
    if u.method == "kmeans" and not num_ids:
        raise ValueError("uda.method kmeans needs the number of identities: set uda.kmeans_num_ids "
                         "(the test split has no ground truth to count them)")
    x = pseudo.clustering_features(features, rows.column("camid").to_numpy(), rows.column("trackid").to_numpy(),
                                   camera_alpha=u.camera_alpha, tracklet_beta=u.tracklet_beta)
    out = {}
    if compare or u.method == "dbscan":
        if too_wide := [s.eps for s in u.dbscan if s.eps >= u.jaccard_weight]:
            raise ValueError(f"uda.dbscan eps {too_wide} must be < uda.jaccard_weight = {u.jaccard_weight:g}: "
                             "pairs whose encodings do not overlap are that far apart and are not in the graph")
        graph = pseudo.jaccard_cosine_graph(x, k1=min(u.k1, len(x) - 1), k2=u.k2, jaccard_weight=u.jaccard_weight)
        for s in u.dbscan:
            out[_dbscan_name(s)] = pseudo.dbscan_labels(graph, s.eps, s.min_samples)
    if compare or u.method == "identity_mining":
        out["identity_mining"] = pseudo.identity_mining(x[:n_query], x, d_n=u.d_n, d_p=u.d_p, seed=cfg.seed)
    if num_ids and (compare or u.method == "kmeans"):
        out["kmeans"] = pseudo.kmeans_labels(x, num_ids, seed=cfg.seed)
    return out


def pseudo_label(cfg: RunConfig, manifest: pa.Table) -> tuple[list[PseudoLabels], list[dict[str, Any]]]:
    """Labels for every stage-2 model, and one quality row per (stage-1 model, method) when the
    test split has ground truth. A model whose labels are all noise or one cluster is skipped
    with a warning (stage 2 does not train on nothing)."""
    chosen = _method_names(cfg)
    todo, quality = [], []
    for src in source_models(cfg):
        rows, feats, n_query = stage1_test_features(cfg, manifest, src.name)
        if cfg.uda.tracklet_beta is not None and not (rows.column("trackid").to_numpy() >= 0).any():
            raise ValueError(f"uda.tracklet_beta is set but the test split of {cfg.data.root} has no track ids; "
                             "set uda.tracklet_beta: null to cluster without tracklet fusion")
        labelled = label_by_method(cfg, rows, feats, n_query)
        pids = rows.column("pid").to_numpy()
        for method, labels in labelled.items():
            row = {"model": src.name, "method": method, "used": method in chosen}
            if (pids >= 0).all():
                row.update(pseudo.pseudo_label_quality(labels, pids))
            quality.append(row)
        for name, method in zip(stage2_names(cfg, src.name), chosen):
            try:
                pseudo.check_labels(labelled[method], f"{src.name} {method}")
            except pseudo.PseudoLabelError as exc:
                log.warning("stage 2 skips %s: %s", name, exc)
                continue
            todo.append(PseudoLabels(stage2_model(cfg, src, name), src.name, method, rows, labelled[method]))
    return todo, quality


def pseudo_manifest(labels: PseudoLabels, stage1: pa.Table, with_training_set: bool = False) -> pa.Table:
    """Training table of one stage-2 model: the labelled test images as split ``train`` (pid = the
    pseudo-identity, after the training pids when ``with_training_set`` keeps stage 1's labelled
    training rows, 001) plus stage 1's validation rows, so both stages validate alike."""
    is_train = pc.equal(stage1.column("split"), "train")
    source = stage1.filter(is_train) if with_training_set else stage1.slice(0, 0)
    offset = (pc.max(source.column("pid")).as_py() + 1) if source.num_rows else 0
    keep = labels.labels >= 0
    rows = labels.rows.filter(pa.array(keep))
    rows = rows.set_column(rows.schema.get_field_index("pid"), "pid",
                           pa.array(labels.labels[keep] + offset, pa.int64()))
    n = rows.num_rows
    for name, value in (("split", "train"), ("domain", "real"), ("color", -1), ("vtype", -1)):
        # attributes unknown: the test split's own labels (where a dataset has them) stay unseen
        column = pa.array([value] * n).cast(rows.schema.field(name).type)
        rows = rows.set_column(rows.schema.get_field_index(name), name, column)
    return pa.concat_tables([source, rows.cast(stage1.schema), stage1.filter(pc.invert(is_train))])


def write_pseudo_labels(run_dir: str | Path, todo: list[PseudoLabels], quality: list[dict[str, Any]]) -> Path:
    """``<run>/uda/<model>.parquet`` (image_id, label) per stage-2 model and ``quality.json``."""
    out = Path(run_dir) / "uda"
    out.mkdir(parents=True, exist_ok=True)
    for p in todo:
        tmp = out / f".{p.model.name}.parquet.tmp"
        pq.write_table(pa.table({"image_id": p.rows.column("image_id"), "label": pa.array(p.labels, pa.int64())}),
                       tmp)
        tmp.replace(out / f"{p.model.name}.parquet")
    path = out / "quality.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"labels": {p.model.name: {"source": p.source, "method": p.method}
                                          for p in todo}, "quality": quality}, indent=1, default=float))
    tmp.replace(path)
    return path


def stage2_config(cfg: RunConfig, todo: list[PseudoLabels]) -> RunConfig:
    """The run after stage 2: the stage-2 models join the config and replace their sources as
    identity features of the ensemble; attribute, camera and orientation stores stay stage 1's."""
    if not todo:
        return cfg
    by_source: dict[str, list[str]] = {}
    for p in todo:
        by_source.setdefault(p.source, []).append(p.model.name)
    ens = cfg.postprocess.ensemble
    identity = ens.models if ens.models is not None else [m.name for m in cfg.models if m.task == "reid"]
    models = [n for m in identity for n in by_source.get(m, [m])]
    weights = {n: ens.weights[m] for m in identity if m in ens.weights for n in by_source.get(m, [m])}
    new_ens = ens.model_copy(update={"models": models, "weights": weights})
    data = cfg.model_dump(mode="json")
    data["models"] += [p.model.model_dump(mode="json") for p in todo]
    data["postprocess"]["ensemble"] = new_ens.model_dump(mode="json")
    return RunConfig.model_validate(data)


def train_stage2(cfg: RunConfig, manifest: pa.Table) -> tuple[RunConfig, list[PseudoLabels], list[dict[str, Any]]]:
    """Pseudo-label, then fine-tune every stage-2 model concurrently (Ray Train launcher).
    Returns the run config after stage 2 (:func:`stage2_config`), the labels and their quality."""
    from vreid.train.launcher import require_trained, train_models, training_manifest

    todo, quality = pseudo_label(cfg, manifest)
    path = write_pseudo_labels(cfg.run_dir, todo, quality)
    for row in quality:
        log.info("pseudo-labels %s / %s: %s", row["model"], row["method"],
                 ", ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)) or "no ground truth")
    log.info("pseudo-label quality written to %s", path)
    if not todo:
        log.warning("stage 2 skipped: no model has usable pseudo-labels")
        return cfg, todo, quality
    cfg2 = stage2_config(cfg, todo)
    stage1 = training_manifest(cfg, manifest)
    tables = {p.model.name: pseudo_manifest(p, stage1, cfg.uda.with_training_set) for p in todo}
    require_trained(train_models(cfg2, manifest, only=list(tables), tables=tables, work="train-uda"))
    return cfg2, todo, quality


def write_stage2_summary(run_dir: str | Path, todo: list[PseudoLabels], quality: list[dict[str, Any]],
                         test: dict[str, list[dict[str, Any]]]) -> Path:
    """``<run>/uda/summary.json`` for the report: pseudo-label quality, validation mAP of each
    stage-2 model and its source, and the test ablation rows of each stage (``test``)."""
    run = Path(run_dir)

    def val_map(name: str) -> float | None:
        return json.loads((run / "models" / name / "model.json").read_text()).get("final_metrics", {}).get("val_mAP")

    models = [{"model": p.model.name, "source": p.source, "method": p.method,
               "images": int((p.labels >= 0).sum()), "classes": int(p.labels.max() + 1),
               "val_mAP_stage1": val_map(p.source), "val_mAP_stage2": val_map(p.model.name)} for p in todo]
    path = run / "uda" / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"quality": quality, "models": models, "test": test}, indent=1, default=float))
    tmp.replace(path)
    return path
