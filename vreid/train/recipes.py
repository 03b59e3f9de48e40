"""The seed papers' training recipes as named presets (``ModelConfig.preset``).

Each preset is a list of stage settings (``StageConfig`` fields, METHODS.md "Training recipe");
every value cites where it comes from. A value a paper does not give is left to the
``StageConfig`` / ``LossConfig`` / ``AugmentConfig`` default (BoT, Luo et al. 2019), which the
notes for each preset say. A model config selects one with ``preset: <name>`` and may override
any field of a stage by naming the stage in ``recipe`` (e.g. ``recipe: [{name: mdl, epochs: 2}]``).
Plain data: importing this module needs no torch.
"""

from __future__ import annotations

import copy
from typing import Any

# seed 000 (AI City 2020, team 44), §4.2 and §3.1-3.2
AIC20_TEAM44 = [{
    "name": "stage1",
    "epochs": 120,  # §4.2 "trained for 120 epochs"
    "optimizer": "adam",  # §4.2 "Adam optimizer"
    "lr": 3.5e-4,  # §4.2 "from 3.5e-5 to 3.5e-4"
    "weight_decay": 5e-4,  # §4.2 "weight decay of 5e-4"
    "warmup_epochs": 10,  # §4.2 "in the first 10 epochs"
    "warmup_factor": 0.1,  # §4.2 3.5e-5 = 0.1 x 3.5e-4
    "milestones": [40, 70],  # §4.2 "divided by 10 at 40 epochs and again at 70 epochs"
    "gamma": 0.1,  # §4.2 "divided by 10"
    "p": 64, "k": 4,  # §4.2 ResNet50 / HRNet: "64 identities and sample 4 images" (DenseNet161: 24)
    "loss": {
        "label_smoothing": 0.0,  # eq. 1: one-hot target q
        "triplet_margin": 0.5,  # eq. 3: alpha = 0.5
        "center_weight": 5e-4,  # eq. 4: beta = 0.0005
        "center_lr": 0.5,  # BoT code (SOLVER.CENTER_LR), the baseline 000 builds on (§3.1)
        "color_weight": 1.0, "type_weight": 1.0,  # eq. 5 (attribute head only)
    },
    "augment": {
        "pad": 10,  # §4.2 "padded with 10 pixels"
        "erase_p": 0.5,  # §4.2 "random erase with a probability of 0.5"
        "shrink_p": 0.5, "shrink_range": [0.4, 0.6],  # §3.3 random shrink: U(0.4, 0.6), p 0.5
        "background_p": 0.0,  # §3.3 background substitution (p 0.5) only for Dense161BS (Table 2): set it there
    },
}]

# seed 001 (DMT, AI City 2020), §3.1-3.2 and §4.2
DMT2020 = [
    {
        "name": "mdl",  # §3.2 pre-trained stage on R ∪ S
        "epochs": 100,  # §4.2 "We totally train the model with 100 epoches"
        "optimizer": "sgd",  # §3.1 / §4.2 "SGD is applied as the optimizer"
        "lr": 1e-2,  # §4.2 "initial learning rate is set to 1e-2"
        "momentum": 0.9, "weight_decay": 5e-4,  # not in 001: BoT's values
        "warmup_epochs": 10,  # §4.2 "spend 10 epochs"
        "warmup_factor": 0.1,  # §4.2 "from 1e-3 to 1e-2"
        "milestones": [40, 70],  # §4.2 "decayed to 1e-3 and 1e-4 at 40th and 70th epoch"
        "gamma": 0.1,
        "p": 8, "k": 12,  # §4.2 "8 identities and 12 images of each identity"
        "domains": ["real", "synthetic"],  # §3.2 R ∪ S
        "synthetic_ids": 100,  # §3.2 "the first 100 IDs of DS"
        "loss": {
            "label_smoothing": 0.1,  # §3.1 BoT-BS keeps BoT's label smoothing (003 §3.1: removed only in 2021)
            "triplet_margin": None,  # §3.1 eq. 1 soft margin
            "center_weight": 0.0,  # §3.1 "We delete center loss"
        },
        "augment": {"flip_p": 0.5, "pad": 10, "erase_p": 0.5},  # §4.2 flipping, padding, erasing (BoT's p)
    },
    {
        "name": "finetune",  # §3.2 fine-tuning stage on R only
        "epochs": 40,  # §4.2 "fine-tuned with 40 epoches"
        "optimizer": "sgd",
        "lr": 1e-3,  # §4.2 "1e-3 for the layer in the backbone network"
        "classifier_lr": 2e-3,  # §4.2 "2e-3 for the fully-connect layer"
        "momentum": 0.9, "weight_decay": 5e-4,  # not in 001: BoT's values
        "warmup_epochs": 0, "milestones": [],  # §4.2 gives no schedule for this stage: constant
        "p": 8, "k": 12,  # §4.2
        "domains": ["real"],  # §3.2 "without S"
        "freeze_stages": 2,  # §3.2 "first two layers of the pre-trained model are frozen"
        "loss": {"label_smoothing": 0.1, "triplet_margin": None, "center_weight": 0.0},  # as stage mdl
        "augment": {"flip_p": 0.5, "pad": 10, "erase_p": 0.5},
    },
]

# seed 002 (VehicleNet), §III-B and §IV-A (VeRi-776 / VehicleID setting)
VEHICLENET = [
    {
        "name": "stage1",  # Stage I on the union of the datasets (Algorithm 1)
        "epochs": 60,  # §IV-A "The total epochs of the first stage is 60 epochs"
        "optimizer": "sgd", "lr": 0.02,  # §IV-A "initial learning rate is set to 0.02"
        "momentum": 0.9,  # §IV-A "momentum of 0.9"
        "weight_decay": 1e-4,  # §IV-A "weight decay is set to 0.0001" (AI City setting: 5e-4)
        "warmup_epochs": 0,  # no warm-up in 002
        "milestones": [40],  # §IV-A "divided by a factor 10 at the 40-th epoch of the first stage"
        "p": 9, "k": 4,  # §IV-A "mini-batch size of 36" (002 samples images naively; 9 x 4 = 36 here)
        "domains": ["real", "synthetic"],  # §III-B Stage I: all of VehicleNet
        "loss": {"label_smoothing": 0.0, "triplet_weight": 0.0, "center_weight": 0.0},  # eq. 4: plain CE only
    },
    {
        "name": "stage2",  # Stage II on the target set only, new classifier (§III-B)
        "epochs": 12,  # §IV-A "second-stage fine-tuning is trained with 12 epochs"
        "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,  # §IV-A, as stage I
        "warmup_epochs": 0,
        "milestones": [8],  # §IV-A "and the 8-th epoch in the second stage"
        "p": 9, "k": 4,
        "domains": ["real"],
        "new_classifier": True,  # §III-B "the classifier is replaced with the new fc2 layer"
        "loss": {"label_smoothing": 0.0, "triplet_weight": 0.0, "center_weight": 0.0},
    },
]

# seed 003 (DMT, AI City 2021), §3.1 and §4.1 (CNN models of stage 1)
DMT2021 = [{
    "name": "stage1",
    "epochs": 80,  # §4.1 "We totally train the model with 80 epochs"
    "optimizer": "sgd", "lr": 1e-2,  # §4.1 "SGD ... initial learning rate is set to 1e-2"
    "momentum": 0.9, "weight_decay": 5e-4,  # not in 003: BoT's values
    "warmup_epochs": 10, "warmup_factor": 0.1,  # §4.1 "10 epochs linearly increasing ... from 1e-3 to 1e-2"
    "milestones": [40, 70], "gamma": 0.1,  # §4.1 "decayed to 1e-3 and 1e-4 at 40th and 70th epoch"
    "p": 8, "k": 12,  # §4.1 "8 identities and 12 images of each identity" (released code: 12 x 8)
    "loss": {
        "label_smoothing": 0.0,  # §3.1 "both label smoothing and center loss are removed"
        "center_weight": 0.0,  # §3.1
        "triplet_margin": None,  # §3.1 soft-margin triplet
    },
    "augment": {"flip_p": 0.5, "pad": 10, "erase_p": 0.5},  # §4.1 flipping, padding, erasing (BoT's p)
}]

# seed 004 (AGNet), §III-E and §IV-B; needs head: agnet
AGNET = [{
    "name": "stage1",
    "epochs": 75,  # §IV-B "first 50 epochs ... the last 25"
    "optimizer": "sgd", "lr": 0.1,  # §IV-B "learning rate of the first 50 epochs is set to 0.1"
    "milestones": [50], "gamma": 0.1,  # §IV-B "... and the last 25 to 0.01"
    "momentum": 0.9,  # 004 writes "momentum of µ = 0.0005", a weight-decay-sized value: momentum 0.9 (BoT)
    "weight_decay": 5e-4,  # ... and that 0.0005 read as the weight decay
    "warmup_epochs": 0,  # no warm-up in 004
    "p": 8, "k": 4,  # §IV-B "batch size is set to 32" (positive and negative pairs need K > 1)
    "loss": {
        "id_weight": 0.5,  # eq. 8 lambda1
        "color_weight": 0.5, "type_weight": 0.5,  # eq. 8 lambda2
        "verify_weight": 1.0,  # eq. 8 lambda3
        "als": True,  # §III-D: the verification loss is ALS (eq. 6)
        "label_smoothing": 0.0,  # eq. 4: plain CE for the category
        "triplet_weight": 0.0,  # AGNet has no triplet loss
        "center_weight": 0.0,
    },
}]

RECIPES: dict[str, list[dict[str, Any]]] = {
    "aic20_team44": AIC20_TEAM44,
    "dmt2020": DMT2020,
    "vehiclenet": VEHICLENET,
    "dmt2021": DMT2021,
    "agnet": AGNET,
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_recipe(name: str, overrides: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The stages of preset ``name``, each merged with the entry of ``overrides`` of the same stage
    name (nested ``loss`` / ``augment`` merged field by field)."""
    if name not in RECIPES:
        raise ValueError(f"unknown preset {name!r}; the presets are {sorted(RECIPES)}")
    stages = copy.deepcopy(RECIPES[name])
    names = [s["name"] for s in stages]
    for entry in overrides or []:
        entry = entry if isinstance(entry, dict) else entry.model_dump(mode="json")
        if entry.get("name") not in names:
            raise ValueError(f"preset {name!r} has stages {names}; recipe entry {entry.get('name')!r} names none "
                             "of them (overrides name the stage they change)")
        i = names.index(entry["name"])
        stages[i] = _merge(stages[i], entry)
    return stages
