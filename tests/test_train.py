"""Invariants of the training loop, TTA and model set-up, on CPU with tiny models."""

import copy

import numpy as np
import pytest
import timm
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from conftest import TINY_CONVNEXT, TINY_VIT

from ledger.data.augment import BatchTransform
from ledger.errors import LedgerError, SpecError
from ledger.training.models import create_model, save_weights, split_body_head
from ledger.spec.loader import ModelSpec
from ledger.training.checkpoint import Checkpoint
from ledger.training.schedule import Phase
from ledger.data.batches import Batches
from ledger.training.device import Runtime, model_on_device, resolve_precision
from ledger.training.callbacks import Callback
from ledger.training.inference import predict, tta
from ledger.training.loss import Criterion
from ledger.training.step import StepSettings, accumulate_gradients
from ledger.training.learner import Learner, NonFiniteLoss

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


def runtime(accum=1, seed=0, transform=None):
    return Runtime(CPU, FP32, accum, transform or transform_for(), torch.Generator().manual_seed(seed))


def model_spec(**changes):
    return ModelSpec(name="m", arch="vit_tiny_patch16_224", size=(16, 16), **changes)


def test_optimizer_and_schedule_step_once_per_effective_batch():
    images, labels = random_images(44)
    batches = Batches(images, labels, np.arange(44), batch_size=8, shuffle=True, drop_last=True)
    assert len(batches) == 5  # 44 // 8, the short last batch dropped
    model = tiny_vit()
    steps, micro_sizes = [], []
    step_hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    forward_hook = model.register_forward_hook(lambda module, args, out: micro_sizes.append(len(args[0])))
    try:
        learner = Learner(model, batches, runtime(accum=4), Criterion(3))
        history = learner.fit([Phase("train", 2, 1e-3, 0.25, 25.0)]).history
    finally:
        step_hook.remove()
        forward_hook.remove()
    assert len(steps) == 2 * 5
    assert micro_sizes == [2] * (2 * 5 * 4)  # each optimizer step saw 4 micro-batches of 8 // 4
    assert [m.train_images for m in history] == [40, 40]
    assert [m.epoch for m in history] == [1, 2]  # counted from 1, as the console shows them


def test_fit_follows_fastais_one_cycle_for_lr_and_momentum():
    # fastai: pos = step / total; lr = SchedCos(lr/div, lr) up to pct_start, then SchedCos(lr, lr/1e5);
    # SchedCos(a, b)(p) = a + (1 + cos(pi * (1 - p))) * (b - a) / 2. Momentum likewise 0.95 -> 0.85 -> 0.95.
    images, labels = random_images(32)
    model = tiny_vit()
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0])))
    try:
        Learner(model, Batches(images, labels, np.arange(32), 8), runtime(), Criterion(3)).fit(
            [Phase("train", 2, 1e-2, 0.25, 25.0)])
    finally:
        hook.remove()
    rates, moms = [r for r, _ in seen], [m for _, m in seen]
    assert len(rates) == 8  # 2 epochs x 4 steps
    assert rates[0] == pytest.approx(1e-2 / 25) and moms[0] == pytest.approx(0.95)  # pos 0
    # step 1: pos 1/8 = half the warm-up: 4e-4 + (1 + cos(pi/2)) * (1e-2 - 4e-4) / 2 = 5.2e-3
    assert rates[1] == pytest.approx(5.2e-3) and moms[1] == pytest.approx(0.90)
    assert rates[2] == pytest.approx(1e-2) and moms[2] == pytest.approx(0.85)  # pos 0.25: the peak
    # step 7: pos 7/8 -> (0.875 - 0.25) / 0.75 = 5/6 of the way down; 1 + cos(pi/6) = 1.8660254
    assert rates[7] == pytest.approx(1e-2 + 1.8660254 * (1e-7 - 1e-2) / 2)
    assert moms[7] == pytest.approx(0.85 + 1.8660254 * (0.95 - 0.85) / 2)


def test_fit_uses_fastais_adam_and_no_weight_decay_on_norms_and_biases():
    images, labels = random_images(16)
    model = tiny_vit()
    groups = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: groups.append(opt.param_groups))
    try:
        Learner(model, Batches(images, labels, np.arange(16), 8), runtime(), Criterion(3),
                StepSettings(weight_decay=0.01)).fit([Phase("train", 1, 1e-3, 0.25, 25.0)])
    finally:
        hook.remove()
    decay = {id(p): g["weight_decay"] for g in groups[0] for p in g["params"]}
    assert all(g["eps"] == 1e-5 and g["betas"][1] == 0.99 for g in groups[0])
    assert all(g["fused"] for g in groups[0])  # one kernel per step, not a dozen ops per tensor
    assert decay[id(model.head.bias)] == 0 and decay[id(model.norm.weight)] == 0 and decay[id(model.head.weight)] == 0.01


def test_resumed_run_ends_with_bitwise_the_same_weights(tmp_path):
    # drop_path (global torch generator), augmentation (its own generator), batch order (numpy) and
    # mixup (numpy's global generator) all draw random numbers: a resume must restore every one.
    # The weight average (and the step count its warm-up reads) must come back from the checkpoint too.
    images, labels = random_images(48)
    spec = model_spec(mixup=0.4, label_smoothing=0.1, ema=0.9)
    phases = [Phase("frozen", 1, (None, 1e-2), 0.99, 25.0, frozen=True), Phase("train", 2, (1e-4, 5e-3), 0.3, 5.0)]

    def train(folder, stop_after=None):
        torch.manual_seed(3)
        np.random.seed(3)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=3, drop_path_rate=0.2, **TINY_VIT)

        class Stop(Callback):
            def after_epoch(self, learner):
                if learner.metrics.epoch == stop_after:
                    raise KeyboardInterrupt  # killed after this epoch's metrics, before its checkpoint

        batches = Batches(images, labels, np.arange(48), 8, shuffle=True, drop_last=True, seed=7)
        learner = Learner(model, batches, runtime(accum=2, seed=5), Criterion(3, 0.1, mixup=0.4),
                          StepSettings.of(spec), callbacks=[Stop(), Checkpoint(folder)])
        fitted = learner.fit(phases)
        return model, fitted.history, fitted.net

    uninterrupted, full_history, uninterrupted_average = train(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", stop_after=3)  # the checkpoint holds epochs 1 and 2
    resumed, history, resumed_average = train(tmp_path / "b")
    assert [m.epoch for m in history] == [1, 2, 3] and [m.phase for m in history] == ["frozen", "train", "train"]
    # The first two epochs come from the checkpoint; every epoch's loss equals the uninterrupted run's.
    assert [m.train_loss for m in history] == [m.train_loss for m in full_history]
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert uninterrupted_average is not uninterrupted  # the averaged copy, not the trained weights
    for (name, a), (_, b) in zip(uninterrupted_average.state_dict().items(), resumed_average.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_non_finite_loss_fails_the_run_naming_epoch_and_step():
    images, labels = random_images(32)
    with pytest.raises(NonFiniteLoss, match="epoch 1, step 2"):
        # An lr of NaN: the first step's loss is finite, every later one NaN.
        Learner(tiny_vit(), Batches(images, labels, np.arange(32), 8), runtime(), Criterion(3)).fit(
            [Phase("train", 1, float("nan"), 0.25, 25.0)])


def test_label_smoothing_loss_matches_the_formula_worked_by_hand():
    # logits (2, 1, 0), target 0, eps 0.1: logsumexp = log(e^2 + e + 1) = log(11.1073) = 2.40761
    # -log p = (0.40761, 1.40761, 2.40761); loss = 0.9 * 0.40761 + 0.1 * mean(-log p) = 0.9 * 0.40761 + 0.1 * 1.40761
    loss = Criterion(3, label_smoothing=0.1)(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(0.9 * 0.40761 + 0.1 * 1.40761, abs=1e-4)


def test_mixup_with_alpha_zero_changes_nothing():
    images, targets = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    criterion = Criterion(3, mixup=0.0, cutmix=0.0)
    mixed, mixed_targets = criterion.mix(images, targets)
    assert mixed is images and mixed_targets is targets
    mixing = Criterion(3, mixup=1.0)
    np.random.seed(0)
    out, soft = mixing.mix(images.clone(), targets)
    assert soft.shape == (6, 3) and torch.allclose(soft.sum(1), torch.ones(6)) and not torch.equal(out, images)
    _, odd = mixing.mix(torch.randn(5, 3, 16, 16), targets[:5])  # odd: the last image stays unmixed
    assert torch.equal(odd[4], torch.tensor([0.0, 1.0, 0.0]))


def test_shuffled_batches_keep_their_random_order_within_a_batch():
    # The cache is stored class by class; reading rows sorted must not hand the loop sorted classes.
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(3, 1)
    labels = np.arange(40, dtype=np.int64)
    batches = Batches(images, labels, np.arange(40), 8, shuffle=True, seed=0)
    order = np.random.default_rng(0).permutation(np.arange(40))
    read = np.concatenate([y.numpy() for _, y in batches])
    assert list(read) == list(order)
    assert [int(x[0, 0, 0]) for x, _ in Batches(images, labels, np.arange(40), 8, shuffle=True, seed=0)][:1] == [order[0]]


def test_identity_augmentation_tta_equals_plain_prediction():
    images, _ = random_images(10)
    model, transform = tiny_vit(), transform_for()
    batches = Batches(images, None, np.arange(10), batch_size=4)
    plain, _ = predict(model, batches, runtime(transform=transform))
    blended = tta(model, batches, runtime(transform=transform), n=3, beta=0.25,
                  augment=lambda x, keys, index: transform.plain(x))
    torch.testing.assert_close(blended, plain)
    # ... and real augmentation changes the result, so the equality above is not vacuous.
    augmented = tta(model, batches, runtime(transform=transform), n=3, beta=0.25)
    assert not torch.allclose(augmented, plain)
    torch.testing.assert_close(augmented.sum(1), torch.ones(10))


def test_tta_blends_as_lerp_of_augmented_mean_and_plain():
    images, _ = random_images(6)
    model, transform = tiny_vit(), transform_for()
    batches = Batches(images, None, np.arange(6), batch_size=6)
    torch.manual_seed(5)
    blended = tta(model, batches, runtime(transform=transform), n=2, beta=0.25,
                  augment=lambda x, keys, index: transform.random(x))
    torch.manual_seed(5)
    passes = [predict(model, batches, runtime(transform=transform), lambda x, keys: transform.random(x))[0]
              for _ in range(2)]
    plain, _ = predict(model, batches, runtime(transform=transform))
    torch.testing.assert_close(blended, 0.75 * (passes[0] + passes[1]) / 2 + 0.25 * plain)


def test_frozen_phase_trains_the_head_and_norm_layers_only():
    # fastai's freeze() with train_bn=True: norm layers of the body still train.
    images, labels = random_images(16)
    model = tiny_vit()
    body, head = split_body_head(model)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    before = {id(p): p.detach().clone() for p in model.parameters()}
    learner = Learner(model, Batches(images, labels, np.arange(16), 8), runtime(), Criterion(3),
                      StepSettings(weight_decay=0.0))
    history = learner.fit([Phase("frozen", 1, (None, 1e-2), 0.99, 25.0, frozen=True)]).history
    assert [m.phase for m in history] == ["frozen"]
    body_plain = [p for p in body if id(p) not in norm_ids]
    assert all(torch.equal(p, before[id(p)]) for p in body_plain)
    assert not all(torch.equal(p, before[id(p)]) for p in head)
    assert any(not torch.equal(p, before[id(p)]) for p in body if id(p) in norm_ids)


def test_precision_on_cpu():
    assert resolve_precision("auto", CPU).name == "fp32"
    assert resolve_precision("bf16", CPU).dtype == torch.bfloat16
    with pytest.raises(SpecError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def convnext_spec(**changes):
    base = dict(name="m", arch="convnext_atto", size=(32, 32), model_kwargs=TINY_CONVNEXT)
    return ModelSpec(**(base | changes))


def test_local_weights_load_everything_but_the_classifier(tmp_path):
    source = create_model(convnext_spec(), num_classes=5)
    weights = tmp_path / "weights.safetensors"
    save_weights(source, weights)
    loaded = create_model(convnext_spec(pretrained=weights), num_classes=3)
    own, theirs = loaded.state_dict(), source.state_dict()
    for key in own:
        if key.startswith("head.fc"):
            assert own[key].shape[0] == 3  # a new classifier for this competition's classes
        else:
            assert torch.equal(own[key], theirs[key]), key
    # A plain torch state dict works too (read with weights_only=True).
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    again = create_model(convnext_spec(pretrained=tmp_path / "weights.pth"), num_classes=3)
    assert torch.equal(again.stem[0].weight, source.stem[0].weight)


def test_local_weights_of_another_arch_are_refused(tmp_path):
    weights = tmp_path / "vit.safetensors"
    save_weights(tiny_vit(), weights)
    with pytest.raises(LedgerError, match=r"vit.safetensors: weights do not fit convnext_atto"):
        create_model(convnext_spec(pretrained=weights), num_classes=3)
    with pytest.raises(LedgerError, match=r"missing.safetensors: weights file not found"):
        create_model(convnext_spec(pretrained=tmp_path / "missing.safetensors"), num_classes=3)


def test_models_train_and_predict_channels_last_with_the_same_results():
    # model_on_device puts every net and its batches in NHWC (about 2x faster on a CPU for
    # EfficientNet, bench/bench_layout.py); the layout must not change what the net computes.
    spec = ModelSpec(name="m", arch="resnet18", size=(16, 16), model_kwargs={"layers": [1, 1, 1, 1]})
    torch.manual_seed(0)
    net, transform = model_on_device(spec, 3, CPU)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.conv1.weight.is_contiguous()  # really NHWC, not a 1x1 case where both layouts agree
    images, _ = random_images(6)
    batch = torch.from_numpy(images)
    for x in (transform.plain(batch), transform.random(batch, torch.Generator().manual_seed(0))):
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    contiguous_net = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    assert contiguous_net.conv1.weight.is_contiguous()
    batches = Batches(images, None, np.arange(6), batch_size=3)
    nhwc, _ = predict(net, batches, runtime(transform=transform))
    nchw_transform = BatchTransform(transform.size, transform.mean.flatten().tolist(), transform.std.flatten().tolist())
    assert nchw_transform.plain(batch).is_contiguous()
    nchw, _ = predict(contiguous_net, batches, runtime(transform=nchw_transform))
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-5)
