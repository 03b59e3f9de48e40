"""ONNX export of a trained model, checked with onnxruntime against PyTorch on the run's images.

``model.onnx`` takes ``images`` (B, 3, H, W) with a dynamic batch axis and returns ``feature``
(the test feature) and each probability head the model has (``color_prob``, ``type_prob``,
``camera_prob``). The check runs both on real images of the run (the validation split, else the
test split): the largest difference of the L2-normalised features and of the probabilities must
stay within tolerance and the top-k gallery ranking of every query must be identical. Only a
file that passed is renamed to ``model.onnx``; a failing one is kept as ``model.onnx.failed``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np
import pyarrow as pa
import torch
from torch import nn

ONNX_FILE, REPORT_FILE = "model.onnx", "onnx_check.json"
PROB_OUTPUTS = ("color_prob", "type_prob", "camera_prob")


class OnnxCheckFailed(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


class OnnxOutputs(nn.Module):
    """The model's eval-mode dict as a tuple of named outputs (what ONNX graphs return)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[n] for n in self.names)


def output_names(model: nn.Module, input_size: tuple[int, int]) -> list[str]:
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, *input_size))
    return ["feature"] + [n for n in PROB_OUTPUTS if n in out]


def export_graph(model: nn.Module, input_size: tuple[int, int], path: Path, opset: int, dynamo: bool) -> list[str]:
    """Write the ONNX graph of ``model`` (eval mode, dynamic batch) to ``path``; returns its outputs."""
    names = output_names(model, input_size)
    wrapper = OnnxOutputs(model, names).eval()
    example = (torch.zeros(2, 3, *input_size),)
    if dynamo:
        shapes = {"images": {0: torch.export.Dim("batch", min=1)}}
        torch.onnx.export(wrapper, example, str(path), input_names=["images"], output_names=names, dynamo=True,
                          dynamic_shapes=shapes, external_data=False, opset_version=opset)
    else:
        axes = {n: {0: "batch"} for n in ["images", *names]}
        torch.onnx.export(wrapper, example, str(path), input_names=["images"], output_names=names, dynamo=False,
                          dynamic_axes=axes, opset_version=opset)
    return names


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k(query: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Top-k gallery indices per query by squared distance of L2-normalised features (stable)."""
    q, g = _l2(query.astype(np.float64)), _l2(gallery.astype(np.float64))
    dist = (q ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None] - 2 * q @ g.T
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


@dataclass
class CheckReport:
    model: str
    images: int
    max_feature_diff: float
    max_prob_diff: dict[str, float]
    queries: int
    top_k: int
    rankings_differ: int
    passed: bool

    def describe(self) -> str:
        probs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_prob_diff.items())
        return (f"model '{self.model}': ONNX vs PyTorch on {self.images} images: max |d feature| after L2 "
                f"{self.max_feature_diff:.2e}{', max |d prob| ' + probs if probs else ''}; top-{self.top_k} "
                f"rankings of {self.queries} queries: {self.rankings_differ} differ")


def compare(name: str, torch_out: dict[str, np.ndarray], onnx_out: dict[str, np.ndarray], n_query: int,
            k: int, feature_atol: float, prob_atol: float) -> CheckReport:
    """Compare both runtimes' outputs (rows: the queries first, then the gallery)."""
    fdiff = float(np.abs(_l2(torch_out["feature"]) - _l2(onnx_out["feature"])).max())
    pdiff = {n: float(np.abs(torch_out[n] - onnx_out[n]).max()) for n in torch_out if n != "feature"}
    k = min(k, len(torch_out["feature"]) - n_query)
    rt = top_k(torch_out["feature"][:n_query], torch_out["feature"][n_query:], k)
    ro = top_k(onnx_out["feature"][:n_query], onnx_out["feature"][n_query:], k)
    differ = int((rt != ro).any(axis=1).sum())
    ok = fdiff <= feature_atol and all(v <= prob_atol for v in pdiff.values()) and differ == 0
    return CheckReport(name, len(torch_out["feature"]), fdiff, pdiff, n_query, k, differ, ok)


def run_both(model: nn.Module, session, images: np.ndarray, names: list[str], batch_size: int):
    """Outputs of PyTorch and of the onnxruntime session on the same batches."""
    t_out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    o_out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    model.eval()
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        with torch.no_grad():
            t = model(torch.from_numpy(x))
        for n, v in zip(names, session.run(names, {"images": x})):
            o_out[n].append(v)
            t_out[n].append(t[n].numpy())
    return {n: np.concatenate(v) for n, v in t_out.items()}, {n: np.concatenate(v) for n, v in o_out.items()}


def load_images(rows: pa.Table, root: Path, input_size: tuple[int, int]) -> np.ndarray:
    from vreid.data.images import decode_image
    from vreid.data.transforms import build_test_transform

    tf = build_test_transform(input_size)
    return np.stack([tf(decode_image(root / i)).numpy() for i in rows.column("image_id").to_pylist()])


def check_rows(cfg, manifest: pa.Table) -> tuple[pa.Table, pa.Table, str]:
    """Query and gallery rows the check runs on: the validation split when the config has one."""
    from vreid.data import split_table
    from vreid.train.launcher import training_manifest

    source, split = (training_manifest(cfg, manifest), "validation") if cfg.data.validation.num_ids > 0 \
        else (manifest, "test")
    n = cfg.export.max_images
    q = split_table(source, "query")
    q = q.slice(0, min(q.num_rows, n // 2))
    g = split_table(source, "gallery")
    return q, g.slice(0, min(g.num_rows, n - q.num_rows)), split


def export_model(cfg, name: str, manifest: pa.Table) -> CheckReport:
    """Export ``<run>/models/<name>`` to ``model.onnx`` beside it and check it (module docstring).
    Raises :class:`OnnxCheckFailed` naming the model and the difference when the check fails."""
    import onnxruntime as ort

    from vreid.data import dataset_root
    from vreid.models.trained import load_trained_model

    names = [m.name for m in cfg.models]
    if name not in names:
        raise ValueError(f"--model '{name}' is not a model of this config (those are {names})")
    model_dir = Path(cfg.run_dir).resolve() / "models" / name
    model, meta = load_trained_model(model_dir)
    size = tuple(meta["build_args"]["input_size"])
    ecfg = cfg.export
    tmp = model_dir / f".{ONNX_FILE}.tmp-{os.getpid()}"
    outputs = export_graph(model, size, tmp, ecfg.opset, ecfg.dynamo)
    q, g, split = check_rows(cfg, manifest)
    images = load_images(pa.concat_tables([q, g]), dataset_root(manifest), size)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    t_out, o_out = run_both(model, session, images, outputs, ecfg.batch_size)
    report = compare(name, t_out, o_out, q.num_rows, ecfg.top_k, ecfg.feature_atol, ecfg.prob_atol)
    record = {**asdict(report), "split": split, "outputs": outputs, "opset": ecfg.opset,
              "checkpoint_sha256": meta["sha256"], "feature_atol": ecfg.feature_atol, "prob_atol": ecfg.prob_atol}
    if not report.passed:
        os.replace(tmp, model_dir / f"{ONNX_FILE}.failed")
        (model_dir / f"{REPORT_FILE}.failed").write_text(json.dumps(record, indent=1))
        raise OnnxCheckFailed(f"ONNX check FAILED for {report.describe()} (tolerance: feature {ecfg.feature_atol:g}, "
                              f"prob {ecfg.prob_atol:g}, identical top-{report.top_k}); kept as "
                              f"{model_dir / (ONNX_FILE + '.failed')}, not as {ONNX_FILE}")
    (model_dir / f".{REPORT_FILE}.tmp").write_text(json.dumps(record, indent=1))
    os.replace(model_dir / f".{REPORT_FILE}.tmp", model_dir / REPORT_FILE)
    os.replace(tmp, model_dir / ONNX_FILE)
    return report

