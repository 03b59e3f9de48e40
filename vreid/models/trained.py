"""A trained model on disk: weights (safetensors), the build arguments and the resolved config.

``<run>/models/<name>/`` holds ``model.safetensors``, ``model.json`` (everything
``build_model`` needs plus the model config) and ``_SUCCESS.json`` (weights sha256, written
last). Extraction loads it with :func:`load_trained_model`, without any training state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vreid.errors import InputError

WEIGHTS, META, SUCCESS = "model.safetensors", "model.json", "_SUCCESS.json"


class IncompleteModel(InputError, FileNotFoundError):
    """A model directory that holds no complete trained model (not trained yet, or interrupted)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_trained_model(state_dict: dict[str, torch.Tensor], build_args: dict[str, Any],
                         meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write a model directory atomically (temporary sibling renamed when complete)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / WEIGHTS)
    (tmp / META).write_text(json.dumps({"build_args": build_args, **meta}, indent=1, default=str))
    (tmp / SUCCESS).write_text(json.dumps({"sha256": sha256_file(tmp / WEIGHTS), "key": meta.get("key")}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def read_trained_meta(model_dir: str | Path) -> dict[str, Any]:
    """``model.json`` plus the recorded sha256; raises when the directory is not complete."""
    d = Path(model_dir)
    if not (d / SUCCESS).is_file():
        raise IncompleteModel(f"{d}: no complete trained model here (missing {SUCCESS})")
    meta = json.loads((d / META).read_text())
    meta["sha256"] = json.loads((d / SUCCESS).read_text())["sha256"]
    return meta


def load_trained_model(model_dir: str | Path, device: str | torch.device = "cpu",
                       verify: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model from ``model.json`` and load its weights; checks the sha256 recorded."""
    from safetensors.torch import load_file

    from vreid.models import build_model

    d = Path(model_dir)
    meta = read_trained_meta(d)
    if verify and sha256_file(d / WEIGHTS) != meta["sha256"]:
        raise ValueError(f"{d / WEIGHTS}: sha256 does not match the one recorded in {SUCCESS}")
    args = dict(meta["build_args"])
    args["input_size"] = tuple(args["input_size"])
    model = build_model(**{**args, "pretrained": False, "pretrained_path": None})
    try:
        model.load_state_dict(load_file(d / WEIGHTS, device="cpu"))
    except RuntimeError as exc:
        raise ValueError(f"{d / WEIGHTS}: weights do not match the model described in {META}: {exc}") from None
    return model.to(device).eval(), meta
