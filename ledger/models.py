"""timm model creation with hub or local weights, the body / head split, and parameter groups."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ledger.errors import LedgerError, first_line
from ledger.spec import ModelSpec


def create_model(model: ModelSpec, num_classes: int) -> nn.Module:
    """`pretrained: true` takes timm's hub weights; a path takes a local safetensors file or state
    dict (loaded with weights_only=True). Either way the classifier is new, sized for the classes."""
    kwargs = dict(num_classes=num_classes, **model.model_kwargs)
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
    in_head = lambda key: key == prefix or key.startswith(prefix + ".")  # noqa: E731
    state = {k: v for k, v in state.items() if not in_head(k)}
    own = net.state_dict()
    missing = [k for k in own if k not in state and not in_head(k)]
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
    prefix = head_prefix(net)
    body, head = [], []
    for name, param in net.named_parameters():
        (head if name == prefix or name.startswith(prefix + ".") else body).append(param)
    if not head:
        raise LedgerError(f"{type(net).__name__}: no classifier parameters under {prefix!r}")
    return body, head


def freeze_body(net: nn.Module, frozen: bool) -> None:
    body, _ = split_body_head(net)
    for param in body:
        param.requires_grad_(not frozen)


def parameter_groups(net: nn.Module, lr: float, discriminative: bool) -> list[dict]:
    """One group at `lr`, or (fine-tuning the unfrozen model) early body, late body and head with
    learning rates spread geometrically from lr/100 to lr/2, as fastai's `fine_tune`."""
    body, head = split_body_head(net)
    if not discriminative:
        return [{"params": body + head, "lr": lr}]
    middle = len(body) // 2
    groups = [body[:middle], body[middle:], head]
    low, high = lr / 100, lr / 2
    rates = [low * (high / low) ** (i / (len(groups) - 1)) for i in range(len(groups))]
    return [{"params": params, "lr": rate} for params, rate in zip(groups, rates) if params]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def save_weights(net: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # contiguous CPU copies: safetensors refuses shared or strided storage
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))


def model_device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device
