"""IBN-a normalisation applied to timm ResNet-family models.

IBN-Net (Pan et al., ECCV 2018), as used by seed 000 (Fig. 1) and seeds 001/003 (ResNet-IBN-a
backbones): in every block of stages 1-3, the BN after the block's first convolution (the 1x1
conv of a Bottleneck, the first 3x3 of a BasicBlock) is replaced by Instance Normalisation on half
of the channels and Batch Normalisation on the other half. Stage 4 keeps plain BN.
"""

from __future__ import annotations

import itertools

import torch
from timm.models.resnet import ResNet
from torch import nn

IBN_RATIO = 0.5  # share of channels given to InstanceNorm (IBN-Net, IBN-a)


class IBN(nn.Module):
    """InstanceNorm (affine) on the first ``ratio`` of the channels, BatchNorm on the rest.

    Submodules are named ``IN`` and ``BN`` as in the IBN-Net release, so its ImageNet
    checkpoints (``resnet50_ibn_a.pth`` ...) load into a converted timm model by key.
    """

    def __init__(self, planes: int, ratio: float = IBN_RATIO):
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"IBN ratio must be in (0, 1), got {ratio}")
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, ratio: float = IBN_RATIO) -> "IBN":
        """IBN initialised from ``bn``: IN takes its affine parameters, BN its parameters and
        running statistics, each on its own channels (keeps ImageNet weights useful)."""
        ibn = cls(bn.num_features, ratio)
        h = ibn.half
        with torch.no_grad():
            if bn.affine:
                ibn.IN.weight.copy_(bn.weight[:h])
                ibn.IN.bias.copy_(bn.bias[:h])
                ibn.BN.weight.copy_(bn.weight[h:])
                ibn.BN.bias.copy_(bn.bias[h:])
            if bn.track_running_stats:
                ibn.BN.running_mean.copy_(bn.running_mean[h:])
                ibn.BN.running_var.copy_(bn.running_var[h:])
                ibn.BN.num_batches_tracked.copy_(bn.num_batches_tracked)
        return ibn.to(next(itertools.chain(bn.parameters(), bn.buffers())).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


def convert_ibn_a(model: ResNet, ratio: float = IBN_RATIO) -> ResNet:
    """Turn a timm ResNet-family model (ResNet, ResNeXt, SE-ResNe(X)t, ResNeSt) into its IBN-a
    variant in place: ``bn1`` of every block in ``layer1``-``layer3`` becomes :class:`IBN`."""
    if not isinstance(model, ResNet):
        raise ValueError(
            f"IBN-a conversion needs a timm ResNet-family model, got {type(model).__name__}"
        )
    for stage_name in ("layer1", "layer2", "layer3"):
        for i, block in enumerate(getattr(model, stage_name)):
            bn = getattr(block, "bn1", None)
            if type(bn) is not nn.BatchNorm2d:
                raise ValueError(
                    f"IBN-a conversion: {stage_name}.{i}.bn1 is {type(bn).__name__}, "
                    "expected BatchNorm2d after the block's first conv"
                )
            block.bn1 = IBN.from_batchnorm(bn, ratio)
    return model
