"""Layers a spec names in its model_kwargs, since YAML cannot hold a class: `embed_layer: conv_stem`
gives ViT and Swin a convolutional stem. Torch and timm only: the spec check and the exported bundle
build models with it too."""

from __future__ import annotations

import timm
from torch import nn


class ConvStemPatchEmbed(timm.layers.PatchEmbed):
    """timm's PatchEmbed with its one patch-sized convolution replaced by a small convolutional stem,
    as Xiao et al. (2021, "Early Convolutions Help Transformers See Better") do: log2(patch) 3x3
    stride-2 convolutions, each with BatchNorm and ReLU, then a 1x1 projection to the embedding. The
    tokens, grid and output format stay PatchEmbed's, so ViT and Swin take it unchanged (their
    `embed_layer`). Why: from random weights on a few thousand small images, a ViT or Swin with a
    linear patch projection learned nothing on noisy colour images (docs/benchmarks.md)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        patch, (in_chans, embed_dim) = self.patch_size, (self.proj.in_channels, self.proj.out_channels)
        steps = patch[0].bit_length() - 1
        if patch[0] != patch[1] or patch[0] != 2**steps or steps < 1:
            raise ValueError(f"embed_layer conv_stem needs a square power-of-2 patch_size, not {patch}")
        layers, channels = [], in_chans
        for step in range(steps):
            width = max(16, embed_dim // 2 ** (steps - 1 - step))
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


# Layers a spec names in model_kwargs (YAML cannot hold a class): `embed_layer: conv_stem`.
NAMED_LAYERS = {"embed_layer": {"conv_stem": ConvStemPatchEmbed}}


def timm_kwargs(model_kwargs: dict) -> dict:
    """A spec's model_kwargs as timm takes them: named layers become their classes."""
    resolved = dict(model_kwargs)
    for key, names in NAMED_LAYERS.items():
        value = resolved.get(key)
        if isinstance(value, str):
            if value not in names:
                raise ValueError(f"{key} {value!r}: not a layer ledger knows ({', '.join(names)})")
            resolved[key] = names[value]
    return resolved
