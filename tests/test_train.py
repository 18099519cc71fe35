"""Invariants of the training loop, TTA and model set-up, on CPU with tiny models."""

import numpy as np
import pytest
import timm
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from conftest import TINY_CONVNEXT, TINY_VIT

from ledger.augment import BatchTransform
from ledger.errors import LedgerError, SpecError
from ledger.models import NORM_TYPES, create_model, freeze_body, parameter_groups, save_weights, split_body_head
from ledger.spec import ModelSpec
from ledger.train import Batches, accumulate_gradients, fine_tune, fit_one_cycle, predict, resolve_precision, tta

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


def tiny_vit(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **TINY_VIT)


def gradients(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("batch, accum", [(8, 8), (8, 4), (10, 4), (7, 3)])
def test_accumulated_gradients_equal_full_batch(batch, accum):
    # A ViT has LayerNorm, no BatchNorm: micro-batches see the same function as the full batch.
    torch.manual_seed(1)
    images, targets = torch.randn(batch, 3, 16, 16), torch.randint(0, 3, (batch,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    identity = lambda x: x  # noqa: E731

    full = tiny_vit()
    full_loss = accumulate_gradients(full, images, targets, 1, identity, FP32, scaler)
    accumulated = tiny_vit()
    accumulated_loss = accumulate_gradients(accumulated, images, targets, accum, identity, FP32, scaler)

    for g_full, g_acc in zip(gradients(full), gradients(accumulated)):
        torch.testing.assert_close(g_acc, g_full, atol=1e-5, rtol=1e-5)
    # The reported loss is the full batch's mean loss, not the last micro-batch's scaled share.
    torch.testing.assert_close(accumulated_loss, full_loss, atol=1e-6, rtol=1e-6)


def transform_for(size=(16, 16)):
    return BatchTransform(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def random_images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), rng.integers(0, 3, n).astype(np.int64)


def test_optimizer_and_schedule_step_once_per_effective_batch():
    images, labels = random_images(44)
    batches = Batches(images, labels, np.arange(44), batch_size=8, shuffle=True, drop_last=True)
    assert len(batches) == 5  # 44 // 8, the short last batch dropped
    model = tiny_vit()
    steps, micro_sizes = [], []
    step_hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    forward_hook = model.register_forward_hook(lambda module, args, out: micro_sizes.append(len(args[0])))
    try:
        history = fit_one_cycle(model, parameter_groups(model, 1e-3, False), batches, epochs=2, accum=4,
                                transform=transform_for(), device=CPU, precision=FP32)
    finally:
        step_hook.remove()
        forward_hook.remove()
    assert len(steps) == 2 * 5
    assert micro_sizes == [2] * (2 * 5 * 4)  # each optimizer step saw 4 micro-batches of 8 // 4
    assert [m.train_images for m in history] == [40, 40]


def test_one_cycle_warms_up_then_anneals_to_near_zero():
    images, labels = random_images(32)
    model = tiny_vit()
    rates = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
    try:
        fit_one_cycle(model, parameter_groups(model, 1e-2, False), Batches(images, labels, np.arange(32), 8),
                      epochs=2, accum=1, transform=transform_for(), device=CPU, precision=FP32)
    finally:
        hook.remove()
    assert len(rates) == 8
    assert rates[0] == pytest.approx(1e-2 / 25)  # one-cycle starts at max_lr / 25
    assert max(rates) == pytest.approx(1e-2, rel=0.05) and rates.index(max(rates)) in (1, 2)
    assert rates[-1] < 1e-6


def test_identity_augmentation_tta_equals_plain_prediction():
    images, _ = random_images(10)
    model, transform = tiny_vit(), transform_for()
    batches = Batches(images, None, np.arange(10), batch_size=4)
    plain, _ = predict(model, batches, transform, CPU, FP32)
    blended = tta(model, batches, transform, CPU, FP32, n=3, beta=0.25, augment=transform.plain)
    torch.testing.assert_close(blended, plain)
    # ... and real augmentation changes the result, so the equality above is not vacuous.
    augmented = tta(model, batches, transform, CPU, FP32, n=3, beta=0.25)
    assert not torch.allclose(augmented, plain)
    torch.testing.assert_close(augmented.sum(1), torch.ones(10))


def test_tta_blends_as_lerp_of_augmented_mean_and_plain():
    images, _ = random_images(6)
    model, transform = tiny_vit(), transform_for()
    batches = Batches(images, None, np.arange(6), batch_size=6)
    torch.manual_seed(5)
    blended = tta(model, batches, transform, CPU, FP32, n=2, beta=0.25, augment=lambda x: transform.random(x))
    torch.manual_seed(5)
    passes = [predict(model, batches, transform, CPU, FP32, lambda x: transform.random(x))[0] for _ in range(2)]
    plain, _ = predict(model, batches, transform, CPU, FP32)
    torch.testing.assert_close(blended, 0.75 * (passes[0] + passes[1]) / 2 + 0.25 * plain)


def test_fine_tune_trains_only_the_head_while_frozen():
    images, labels = random_images(16)
    model = tiny_vit()
    body, head = split_body_head(model)
    # fastai's train_bn: the body's norm layers train while frozen; every other body weight must not.
    norms = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    body = [p for p in body if id(p) not in norms]
    body_before = [p.detach().clone() for p in body]
    head_before = [p.detach().clone() for p in head]
    history = fine_tune(model, Batches(images, labels, np.arange(16), 8), epochs=0, lr=1e-2, accum=1,
                        transform=transform_for(), device=CPU, precision=FP32, weight_decay=0.0, finetune=True,
                        freeze_epochs=1)
    assert [m.phase for m in history] == ["frozen"]
    assert all(torch.equal(a, b) for a, b in zip(body, body_before))
    assert not all(torch.equal(a, b) for a, b in zip(head, head_before))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_discriminative_learning_rates_spread_from_lr_over_100_to_lr_over_2():
    groups = parameter_groups(tiny_vit(), 0.01, discriminative=True)
    rates = [g["lr"] for g in groups]
    assert rates[0] == pytest.approx(0.0001) and rates[-1] == pytest.approx(0.005)
    assert rates == sorted(rates)
    freeze_body(model := tiny_vit(), True, train_bn=False)
    assert sum(p.requires_grad for p in model.parameters()) == 2  # the classifier's weight and bias


def test_precision_on_cpu():
    assert resolve_precision("auto", CPU).name == "fp32"
    assert resolve_precision("bf16", CPU).dtype == torch.bfloat16
    with pytest.raises(SpecError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def model_spec(**changes):
    base = dict(name="m", arch="convnext_atto", size=(32, 32), model_kwargs=TINY_CONVNEXT)
    return ModelSpec(**(base | changes))


def test_local_weights_load_everything_but_the_classifier(tmp_path):
    source = create_model(model_spec(), num_classes=5)
    weights = tmp_path / "weights.safetensors"
    save_weights(source, weights)
    loaded = create_model(model_spec(pretrained=weights), num_classes=3)
    own, theirs = loaded.state_dict(), source.state_dict()
    for key in own:
        if key.startswith("head.fc"):
            assert own[key].shape[0] == 3  # a new classifier for this competition's classes
        else:
            assert torch.equal(own[key], theirs[key]), key
    # A plain torch state dict works too (read with weights_only=True).
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    again = create_model(model_spec(pretrained=tmp_path / "weights.pth"), num_classes=3)
    assert torch.equal(again.stem[0].weight, source.stem[0].weight)


def test_local_weights_of_another_arch_are_refused(tmp_path):
    weights = tmp_path / "vit.safetensors"
    save_weights(tiny_vit(), weights)
    with pytest.raises(LedgerError, match=r"vit.safetensors: weights do not fit convnext_atto"):
        create_model(model_spec(pretrained=weights), num_classes=3)
    with pytest.raises(LedgerError, match=r"missing.safetensors: weights file not found"):
        create_model(model_spec(pretrained=tmp_path / "missing.safetensors"), num_classes=3)
