"""Weight averaging and gradient clipping in the one training step, worked by hand on tiny nets."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ledger.batches import Batches
from ledger.device import Runtime, resolve_precision
from ledger.loss import Criterion
from ledger.step import StepSettings, loop_parts, train_step

CPU = torch.device("cpu")


class AsFloat:
    """A batch transform that hands the pixels on unchanged, so gradients can be worked by hand."""

    def random(self, images, generator=None):
        return images.float()

    plain = random


def linear_runtime(scaled: bool = False) -> Runtime:
    precision = resolve_precision("fp32", CPU)
    if scaled:  # fp16's grad scaler, on a CPU: the scaler works the same on float32 gradients
        precision = type(precision)("fp16", None, scaled=True)
    return Runtime(CPU, precision, 1, AsFloat(), torch.Generator().manual_seed(0))


def zero_linear() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False))
    nn.init.zeros_(net[1].weight)
    return net


def one_image() -> tuple[torch.Tensor, torch.Tensor]:
    # x = (3, 4, 0), target 0. With zero weights the logits are (0, 0) and softmax (0.5, 0.5), so
    # dL/dlogits = p - onehot = (-0.5, 0.5) and dL/dW = outer((-0.5, 0.5), x):
    # [[-1.5, -2, 0], [1.5, 2, 0]], whose norm is sqrt(2 * (2.25 + 4)) = sqrt(12.5) = 3.53553.
    return torch.tensor([[[[3]], [[4]], [[0]]]], dtype=torch.uint8), torch.tensor([0])


def gradients_at_step(net, settings, runtime) -> torch.Tensor:
    """The gradient the optimizer steps with (seen just before its step)."""
    images, targets = one_image()
    parts = loop_parts(net, Batches(images.numpy(), targets.numpy(), np.arange(1), 1), runtime, settings)
    seen = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: seen.append(
        net[1].weight.grad.detach().clone()))
    try:
        train_step(parts, images, targets, runtime, Criterion(2), settings)
    finally:
        handle.remove()
    return seen[0]


def test_clipping_scales_the_global_gradient_norm_to_the_limit():
    unclipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0), linear_runtime())
    assert unclipped.norm().item() == pytest.approx(12.5 ** 0.5, abs=1e-5)
    clipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0, clip_grad=1.0), linear_runtime())
    assert clipped.norm().item() == pytest.approx(1.0, abs=1e-5)
    # Same direction: every entry divided by 3.53553 (-1.5 / 3.53553 = -0.42426).
    assert clipped[0, 0].item() == pytest.approx(-0.42426, abs=1e-5)
    # A limit above the norm changes nothing.
    loose = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0, clip_grad=10.0), linear_runtime())
    torch.testing.assert_close(loose, unclipped)


def test_clipping_under_the_grad_scaler_sees_the_unscaled_gradients():
    # fp16's scaler multiplies the loss by 65536; clipping the scaled gradients to 1 would leave
    # 1 / 65536 after the scaler unscales them. The optimizer must step with norm 1.
    runtime = linear_runtime(scaled=True)
    assert loop_parts(zero_linear(), None, runtime, StepSettings()).scaler.get_scale() == 65536.0
    clipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0, clip_grad=1.0), runtime)
    assert clipped.norm().item() == pytest.approx(1.0, abs=1e-5)
    # Without clipping the fused AdamW gets the scaled gradients and unscales them in its kernel:
    # 3.53553 * 65536 = 231704.7, so the scaler really is at work in this test.
    unclipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0), runtime)
    assert unclipped.norm().item() == pytest.approx(3.53553 * 65536, rel=1e-5)


def test_weight_average_follows_timms_warm_up_worked_by_hand():
    # timm's ModelEmaV3 with use_warmup, after optimizer step t: decay = min(ema, 1 - t^(-2/3)),
    # average = decay * average + (1 - decay) * weights.
    #   t = 1: 0 (the average is a copy of the weights)
    #   t = 2: 1 - 2^(-2/3) = 1 - 0.629961 = 0.370039
    #   t = 3: 1 - 3^(-2/3) = 1 - 0.480750 = 0.519250
    #   t = 4: 1 - 4^(-2/3) = 1 - 0.396850 = 0.603150, capped at ema 0.6 -> 0.6
    decays = [0.0, 0.370039, 0.519250, 0.6]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    images, targets = one_image()
    runtime, settings = linear_runtime(), StepSettings(weight_decay=0.0, ema=0.6)
    parts = loop_parts(net, Batches(images.numpy(), targets.numpy(), np.arange(1), 1), runtime, settings)
    expected = None
    for decay in decays:
        for group in parts.optimizer.param_groups:
            group["lr"] = 0.1
        train_step(parts, images, targets, runtime, Criterion(2), settings)
        weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        expected = weights if expected is None else {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
        averaged = parts.inference_net.state_dict()
        for key in weights:
            torch.testing.assert_close(averaged[key], expected[key], atol=1e-6, rtol=1e-6)
    assert parts.steps == 4
    # The average lags the weights: after 4 steps it is not the net itself.
    assert not torch.allclose(parts.inference_net[1].weight, net[1].weight)
