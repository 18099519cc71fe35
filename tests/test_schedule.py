"""fastai's schedule formulas against numbers worked out by hand (the arithmetic is in each test).

SchedCos(start, end)(p) = start + (1 + cos(pi * (1 - p))) * (end - start) / 2, so p=0 gives start,
p=0.5 the midpoint (cos(pi/2) = 0), p=1 gives end.
"""

import dataclasses

import pytest
import torch

from ledger.training.schedule import OneCycle, Phase, cycle_momentum, even_mults, fit_phases, lr_range, one_cycle
from ledger.spec.loader import ModelSpec

approx = pytest.approx


def test_even_mults_is_geometric():
    # 1e-4 -> 1e-2 in 3 numbers: ratio (1e-2 / 1e-4) ** (1/2) = 10.
    assert even_mults(1e-4, 1e-2, 3) == approx([1e-4, 1e-3, 1e-2])
    assert even_mults(1e-4, 1e-2, 1) == [1e-2]  # one group: just stop


def test_lr_range_as_fastai_learner():
    assert lr_range(0.01, 2) == [0.01, 0.01]  # a float: every group
    assert lr_range((1e-4, 1e-2), 2) == approx([1e-4, 1e-2])  # slice(1e-4, 1e-2) on body + head
    assert lr_range(slice(1e-4, 1e-2), 3) == approx([1e-4, 1e-3, 1e-2])
    # slice(None, 0.01): stop/10 = 0.001 for every group but the last.
    assert lr_range((None, 0.01), 2) == approx([0.001, 0.01])
    assert lr_range(slice(0.01), 3) == approx([0.001, 0.001, 0.01])


def test_one_cycle_learning_rate_by_hand():
    lr, pct, div, final = 0.01, 0.25, 25.0, 1e5
    assert one_cycle(0.0, lr, pct, div, final) == approx(0.01 / 25)  # 0.0004: start of warm-up
    # Mid warm-up, pos 0.125 is half of 0.25: midpoint of 0.0004 and 0.01 = 0.0052.
    assert one_cycle(0.125, lr, pct, div, final) == approx(0.0052)
    assert one_cycle(0.25, lr, pct, div, final) == approx(0.01)  # peak
    # pos 0.625 is half of the way down: (0.01 + 0.01/1e5) / 2 = 0.00500005.
    assert one_cycle(0.625, lr, pct, div, final) == approx(0.00500005)
    # pos 0.75: (0.75-0.25)/0.75 = 2/3 of the way down, cos(pi/3) = 0.5:
    # 0.01 + (1 + 0.5) * (1e-7 - 0.01) / 2 = 0.01 - 0.75 * 0.0099999 = 0.002500075.
    assert one_cycle(0.75, lr, pct, div, final) == approx(0.002500075)
    assert one_cycle(1.0, lr, pct, div, final) == approx(1e-7)  # end: lr / div_final


def test_momentum_cycles_opposite_to_the_learning_rate():
    assert cycle_momentum(0.0, 0.25) == approx(0.95)
    assert cycle_momentum(0.125, 0.25) == approx(0.90)  # midpoint of 0.95 and 0.85
    assert cycle_momentum(0.25, 0.25) == approx(0.85)  # lowest at the lr's peak
    assert cycle_momentum(0.625, 0.25) == approx(0.90)
    assert cycle_momentum(1.0, 0.25) == approx(0.95)


def test_fit_phases_follow_fastai_fine_tune():
    spec = ModelSpec(name="m", arch="resnet18", size=(32, 32), lr=0.01, epochs=5, freeze_epochs=1, finetune=True)
    frozen, train = fit_phases(spec)
    # freeze(); fit_one_cycle(1, slice(0.01), pct_start=0.99) with fit_one_cycle's div 25.
    assert frozen == Phase("frozen", 1, (None, 0.01), pct_start=0.99, div=25.0, frozen=True)
    # base_lr /= 2 -> 0.005; fit_one_cycle(5, slice(0.005/100, 0.005), pct_start=0.3, div=5).
    assert train.name == "train" and train.epochs == 5 and not train.frozen
    assert train.lr == approx((0.00005, 0.005)) and (train.pct_start, train.div) == (0.3, 5.0)
    # Without fine-tuning: one fit_one_cycle(epochs, lr) with fastai's defaults.
    plain = ModelSpec(name="m", arch="resnet18", size=(32, 32), lr=0.01, epochs=3)
    assert fit_phases(plain) == [Phase("train", 3, 0.01, pct_start=0.25, div=25.0)]
    # A phase of zero epochs is left out, as fastai's fit(0) does nothing.
    assert [p.name for p in fit_phases(dataclasses.replace(spec, freeze_epochs=0))] == ["train"]


def two_group_adamw():
    body, head, head_bias = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    return torch.optim.AdamW([
        {"params": [body], "layer_group": 0},
        {"params": [head], "layer_group": 1},
        {"params": [head_bias], "layer_group": 1, "weight_decay": 0.0},
    ], lr=1.0)


def test_one_cycle_sets_discriminative_lrs_and_beta1():
    optimizer = two_group_adamw()
    phase = Phase("train", 1, (0.00005, 0.005), pct_start=0.3, div=5.0)
    schedule = OneCycle(optimizer, phase, total_steps=20)

    def state():
        return [g["lr"] for g in optimizer.param_groups], [g["betas"] for g in optimizer.param_groups]

    schedule.apply(0)  # lr_max / div: body 0.00005/5 = 1e-5, head 0.005/5 = 0.001
    lrs, betas = state()
    assert lrs == approx([1e-5, 1e-3, 1e-3]) and betas == [(approx(0.95), 0.999)] * 3
    schedule.apply(3)  # pos 0.15, half of pct_start: body (1e-5 + 5e-5)/2 = 3e-5, head (1e-3 + 5e-3)/2
    lrs, betas = state()
    assert lrs == approx([3e-5, 3e-3, 3e-3]) and betas[0][0] == approx(0.90)
    schedule.apply(6)  # pos 0.3: the peak, lowest momentum
    lrs, betas = state()
    assert lrs == approx([5e-5, 5e-3, 5e-3]) and betas[0][0] == approx(0.85)
    schedule.apply(13)  # pos 0.65, half way down: head (0.005 + 0.005/1e5) / 2 = 0.002500025
    lrs, betas = state()
    assert lrs[1] == approx(0.002500025) and lrs[0] == approx((5e-5 + 5e-10) / 2) and betas[0][0] == approx(0.90)


def test_one_cycle_is_stateless_given_the_step():
    # A resumed run rebuilds the schedule and applies its step count: same values as never stopping.
    phase = Phase("train", 1, (None, 0.01), pct_start=0.25, div=25.0)
    walked, fresh = two_group_adamw(), two_group_adamw()
    schedule = OneCycle(walked, phase, total_steps=8)
    for step in range(8):
        schedule.apply(step)
    schedule.apply(5)
    OneCycle(fresh, phase, total_steps=8).apply(5)
    assert [g["lr"] for g in walked.param_groups] == [g["lr"] for g in fresh.param_groups]
    assert [g["betas"] for g in walked.param_groups] == [g["betas"] for g in fresh.param_groups]


def test_head_only_optimizer_still_spreads_over_two_groups_and_sgd_gets_momentum():
    # The frozen phase may build its optimizer from the head alone: slice(None, 0.01) still gives
    # the head 0.01 (not 0.01/10), as fastai's optimizer keeps both layer groups.
    head = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [head], "layer_group": 1}], lr=1.0, momentum=0.9)
    OneCycle(optimizer, Phase("frozen", 1, (None, 0.01), 0.99, 25.0, frozen=True), total_steps=4).apply(0)
    assert optimizer.param_groups[0]["lr"] == approx(0.01 / 25)
    assert optimizer.param_groups[0]["momentum"] == approx(0.95)
