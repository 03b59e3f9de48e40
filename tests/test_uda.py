"""UDA stage 2: pseudo-labelled training tables, the config after stage 2, classifier rows from
centroids, and stage 2 end to end through the Ray Train launcher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from vreid.config import UDAConfig, load_config
from vreid.data import split_table, validate_manifest
from vreid.train.uda import PseudoLabels, pseudo_manifest, stage2_config, stage2_model, stage2_names


def _cfg(tmp_path, root="data/synth-tiny", *extra):
    return load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"data.root={root}", *extra])


def _test_rows(manifest) -> pa.Table:
    return pa.concat_tables([split_table(manifest, "query"), split_table(manifest, "gallery")])


def test_pseudo_manifest_trains_on_labelled_test_images_and_keeps_validation(tmp_path, tiny_manifest):
    from vreid.train.launcher import training_manifest

    cfg = _cfg(tmp_path)
    rows = _test_rows(tiny_manifest)
    labels = np.arange(rows.num_rows) % 7
    labels[::5] = -1
    table = pseudo_manifest(PseudoLabels(stage2_model(cfg, cfg.models[0], "bot-uda"), "bot", "kmeans", rows, labels),
                            training_manifest(cfg, tiny_manifest))
    validate_manifest(table)
    train = table.filter(pc.equal(table.column("split"), "train"))
    assert train.num_rows == int((labels >= 0).sum())
    assert train.column("pid").to_pylist() == labels[labels >= 0].tolist()
    assert train.column("image_id").to_pylist() == [i for i, lab in zip(rows.column("image_id").to_pylist(), labels)
                                                    if lab >= 0]
    assert set(train.column("domain").to_pylist()) == {"real"}
    assert set(train.column("color").to_pylist()) == set(train.column("vtype").to_pylist()) == {-1}
    stage1 = training_manifest(cfg, tiny_manifest)
    assert table.num_rows - train.num_rows == pc.sum(pc.not_equal(stage1.column("split"), "train")).as_py()
    # 001: the pseudo-identities expand the labelled training set, after its pids
    both = pseudo_manifest(PseudoLabels(stage2_model(cfg, cfg.models[0], "bot-uda"), "bot", "kmeans", rows, labels),
                           stage1, with_training_set=True)
    validate_manifest(both)
    src = stage1.filter(pc.equal(stage1.column("split"), "train"))
    both_train = both.filter(pc.equal(both.column("split"), "train"))
    assert both_train.num_rows == src.num_rows + train.num_rows
    offset = pc.max(src.column("pid")).as_py() + 1
    assert both_train.column("pid").to_pylist() == src.column("pid").to_pylist() + (labels[labels >= 0] + offset).tolist()


def test_stage2_config_puts_stage2_models_in_the_ensemble(tmp_path):
    cfg = _cfg(tmp_path, "data/synth-tiny", "uda.enabled=true", "uda.dbscan=[{eps: 0.55}, {eps: 0.6}]",
               "postprocess.ensemble.models=[bot, attr]", "postprocess.ensemble.weights={bot: 2.0}")
    names = stage2_names(cfg, "bot")
    assert names == ["bot-uda0", "bot-uda1"]  # one stage-2 model per DBSCAN setting (003: two)
    todo = [PseudoLabels(stage2_model(cfg, cfg.models[0], n), "bot", "dbscan", pa.table({}), np.zeros(0))
            for n in names]
    cfg2 = stage2_config(cfg, todo)
    assert [m.name for m in cfg2.models] == ["bot", "attr", "bot-uda0", "bot-uda1"]
    ens = cfg2.postprocess.ensemble
    assert ens.models == ["bot-uda0", "bot-uda1", "attr"]
    assert ens.weights == {"bot-uda0": 2.0, "bot-uda1": 2.0}
    assert ens.attribute_model == "attr"  # attribute predictions stay stage 1's (labelled attributes)
    m = cfg2.models[2]
    assert m.init_from == "models/bot", "relative to the run directory, so that a moved run stays complete"
    assert [s.name for s in m.recipe] == ["uda"] and m.recipe[0].classifier_init == "centroids"
    assert m.recipe == [cfg.uda.stage]
    default = UDAConfig().stage
    assert (default.epochs, default.lr, default.classifier_init) == (3, 4e-4, "centroids")  # 003
    assert stage2_config(cfg, []) is cfg


def test_uda_models_must_be_reid_models(tmp_path):
    with pytest.raises(ValueError, match=r"uda.models \['nope'\] are not reid-task models"):
        _cfg(tmp_path, "data/synth-tiny", "uda.enabled=true", "uda.models=[nope]")


def test_class_centroids_are_normalised_mean_fbn(tiny_city, tiny_manifest):
    from vreid.data import dataset_root
    from vreid.data.dataset import ReIDImageDataset
    from vreid.data.transforms import build_test_transform
    from vreid.models import build_model
    from vreid.train.loop import class_centroids

    torch.manual_seed(0)
    model = build_model("resnet10t", num_classes=3, input_size=(48, 48)).eval()
    rows = split_table(tiny_manifest, "gallery").slice(0, 12)
    labels = np.array([0, 1, 2] * 4)
    tf = build_test_transform((48, 48))
    got = class_centroids(model, rows, labels, dataset_root(tiny_manifest), tf, "cpu", 5)
    ds = ReIDImageDataset(rows, dataset_root(tiny_manifest), tf, labels={})
    with torch.no_grad():
        fbn = model.head(model.backbone(torch.stack([ds[i]["image"] for i in range(len(ds))])))["feat_bn"].numpy()
    want = np.stack([fbn[labels == c].mean(0) for c in range(3)])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert got.shape == (3, model.head.neck.bn.num_features)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)
    model.reset_classifier(3, got)
    np.testing.assert_allclose(model.head.neck.classifier.weight.detach().numpy(), want, atol=1e-4)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, tiny_stores):
    """A writable copy of the tiny run with the 'attr' model and its test store."""
    stores_cfg, _ = tiny_stores
    run = tmp_path_factory.mktemp("uda") / "run"
    shutil.copytree(stores_cfg.run_dir, run)
    cfg = load_config("configs/tiny.yaml", [f"run_dir={run}", f"data.root={stores_cfg.data.root}",
                                            "uda.enabled=true", "uda.models=[attr]", "data.validation.num_ids=0"])
    cfg.models = stores_cfg.models
    return cfg


def test_stage2_trains_through_the_launcher(stage1_run, tiny_manifest):
    from vreid.models.trained import load_trained_model
    from vreid.train.uda import train_stage2

    cfg = stage1_run.model_copy(deep=True)
    cfg.uda.method = "kmeans"  # untrained stage-1 features: k-means always yields the known number of ids
    cfg.uda.stage.epochs = 1
    cfg.uda.stage.p = 4
    cfg2, todo, quality = train_stage2(cfg, tiny_manifest)
    assert [p.model.name for p in todo] == ["attr-uda"]
    methods = {q["method"] for q in quality}
    assert methods == {"dbscan eps=0.55 min_samples=4", "identity_mining", "kmeans"}
    n_ids = len(set(_test_rows(tiny_manifest).column("pid").to_pylist()))
    km = next(q for q in quality if q["method"] == "kmeans")
    assert km["used"] and km["num_clusters"] == n_ids == km["num_true_ids"] and km["labelled_fraction"] == 1.0
    assert 0.0 <= km["pair_precision"] <= 1.0
    run = Path(cfg.run_dir)
    saved = json.loads((run / "uda" / "quality.json").read_text())
    assert saved["labels"] == {"attr-uda": {"source": "attr", "method": "kmeans"}}
    assert pq.read_table(run / "uda" / "attr-uda.parquet").num_rows == todo[0].labels.size
    model, meta = load_trained_model(run / "models" / "attr-uda")
    assert len(meta["class_ids"]) == n_ids and model.num_classes == n_ids
    assert [h["stage"] for h in meta["history"]] == ["uda"]
    assert meta["config"]["init_from"] == "models/attr"
    # it started from the stage-1 weights: one epoch at lr 4e-4 moved them only a little
    src, src_meta = load_trained_model(run / "models" / "attr")
    old_w = src.backbone.model.state_dict()
    new_w = model.backbone.model.state_dict()
    conv = next(k for k, v in old_w.items() if v.ndim == 4)
    change = float((new_w[conv] - old_w[conv]).norm() / old_w[conv].norm())
    assert 0 < change < 0.05, change
    # the stage-1 attribute classifiers carry over (stage 2 has no attribute labels)
    assert meta["build_args"]["num_colors"] == src_meta["build_args"]["num_colors"]
    assert [m.name for m in cfg2.models] == ["attr", "cam", "attr-uda"]
    assert cfg2.postprocess.ensemble.models == ["attr-uda"]
    # a rerun finds the model trained on the same labels and skips it
    stamp = (run / "models" / "attr-uda" / "_SUCCESS.json").stat().st_mtime_ns
    again = train_stage2(cfg, tiny_manifest)[0]
    assert [m.name for m in again.models] == [m.name for m in cfg2.models]
    assert (run / "models" / "attr-uda" / "_SUCCESS.json").stat().st_mtime_ns == stamp
    # the run moved (--set run_dir=), its old place gone: stage 2 is still complete there
    moved = run.parent / "moved" / "run"
    shutil.copytree(run, moved)
    away = run.with_name("run.away")
    run.rename(away)
    try:
        stamp = (moved / "models" / "attr-uda" / "_SUCCESS.json").stat().st_mtime_ns
        train_stage2(cfg.model_copy(update={"run_dir": str(moved)}), tiny_manifest)
        assert (moved / "models" / "attr-uda" / "_SUCCESS.json").stat().st_mtime_ns == stamp, "retrained after a move"
    finally:
        away.rename(run)


def test_all_noise_skips_stage2(stage1_run, tiny_manifest, caplog):
    from vreid.train.uda import train_stage2

    cfg = stage1_run.model_copy(deep=True)
    cfg.uda.dbscan = [cfg.uda.dbscan[0].model_copy(update={"min_samples": 10_000})]  # more than the images
    with caplog.at_level("WARNING", logger="vreid.uda"):
        cfg2, todo, quality = train_stage2(cfg, tiny_manifest)
    assert todo == [] and cfg2 is cfg
    assert "all" in caplog.text and "noise" in caplog.text and "stage 2 skipped" in caplog.text
    assert next(q for q in quality if q["method"].startswith("dbscan"))["labelled_fraction"] == 0.0


def test_tracklet_fusion_without_tracks_is_an_error(stage1_run, tiny_manifest):
    from vreid.train.uda import pseudo_label

    no_tracks = tiny_manifest.set_column(tiny_manifest.schema.get_field_index("trackid"), "trackid",
                                         pa.array(np.full(tiny_manifest.num_rows, -1, np.int64)))
    with pytest.raises(ValueError, match="no track ids.*tracklet_beta: null"):
        pseudo_label(stage1_run, no_tracks)


def test_pipeline_stage2_compares_the_stages_in_the_report(stage1_run, tiny_manifest):
    from vreid.pipeline import run_uda_stage
    from vreid.report import write_report

    cfg = stage1_run.model_copy(deep=True)
    cfg.uda.method = "kmeans"
    cfg.uda.stage.epochs = 1
    cfg.uda.stage.p = 4
    timings: dict[str, float] = {}
    cfg2 = run_uda_stage(cfg, tiny_manifest, timings)
    assert "attr-uda" in cfg2.postprocess.ensemble.models
    assert {"postprocess_stage1", "train_stage2", "extract_stage2", "postprocess_stage2"} <= set(timings)
    run = Path(cfg.run_dir)
    summary = json.loads((run / "uda" / "summary.json").read_text())
    for stage in ("stage1", "stage2"):
        assert summary["test"][stage][-1]["step"] == json.loads(
            (run / "results" / stage / "metrics.json").read_text())["ablation"][-1]["step"]
    assert summary["models"][0]["model"] == "attr-uda" and summary["models"][0]["classes"] == 10
    assert summary["test"]["stage2"][0]["mAP"] != summary["test"]["stage1"][0]["mAP"]  # the stage-2 features
    page = write_report(run, tiny_manifest, "stage2", "cfg", timings).read_text()
    assert "UDA stage 2" in page and "Pseudo-label quality" in page and "kmeans (used)" in page
