"""fastai's aug_transforms as one batch transform: identities, exact flips and rotations, the
lighting formulas by hand, and reproducible draws."""

import math

import pytest
import torch

from ledger.data.augment import (
    BRIGHTNESS, BRIGHTNESS_ON, CONTRAST, CONTRAST_ON, FLIP, N_DRAWS, ROTATE, ROTATE_ON, BatchTransform, homography,
)
from ledger.spec.loader import AugmentSpec

MEAN, STD = (0.5,) * 3, (0.25,) * 3
# Every augmentation off: the random pass must reduce to the plain one.
OFF = AugmentSpec(do_flip=False, max_rotate=0.0, min_zoom=1.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0,
                  min_scale=1.0)


def images(n=4, height=16, width=16, seed=0):
    return torch.randint(0, 256, (n, 3, height, width), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def transform(augment=OFF, size=(16, 16), **kwargs):
    return BatchTransform(size, MEAN, STD, augment, **kwargs)


def off_but(**changes):
    return AugmentSpec(**{**OFF.__dict__, **changes})


def test_everything_off_is_the_plain_transform():
    batch = images()
    torch.testing.assert_close(transform().random(batch), transform().plain(batch), atol=1e-5, rtol=1e-5)
    # Upsampling too: grid_sample at the output's pixel centres is bilinear interpolation.
    bigger = transform(size=(24, 20))
    torch.testing.assert_close(bigger.random(batch), bigger.plain(batch), atol=1e-5, rtol=1e-5)
    # augment=None: random() is plain(), whatever the sizes.
    no_augment = transform(None, size=(8, 8))
    other = images(2, 40, 30)
    assert torch.equal(no_augment.random(other), no_augment.plain(other))
    assert transform(size=(16, 16)).random(other).shape == (2, 3, 16, 16)


def test_flip_with_p_1_mirrors_every_image_exactly():
    batch = images()
    flipped = transform(off_but(do_flip=True), p_flip=1.0).random(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, transform().plain(batch).flip(-1), atol=1e-5, rtol=1e-5)
    # At fastai's p=0.5 every image is itself or its mirror, decided by the FLIP draw.
    half = transform(off_but(do_flip=True))
    draws = torch.full((4, N_DRAWS), 0.5, dtype=torch.float64)
    draws[:, FLIP] = torch.tensor([0.1, 0.9, 0.4, 0.6], dtype=torch.float64)
    out, plain = half.apply(batch, draws), half.plain(batch)
    for i, mirrored in enumerate([True, False, True, False]):
        torch.testing.assert_close(out[i], plain[i].flip(-1) if mirrored else plain[i], atol=1e-5, rtol=1e-5)


def test_rotation_of_the_full_range_is_a_quarter_turn():
    # max_rotate 90, ROTATE draw 1.0 -> +90 degrees: fastai's matrix [[cos, sin], [-sin, cos]] =
    # [[0, 1], [-1, 0]] samples input (y, -x) for output (x, y), i.e. a clockwise quarter turn.
    rotate = transform(off_but(max_rotate=90.0, p_affine=1.0))
    draws = torch.zeros(4, N_DRAWS, dtype=torch.float64)
    draws[:, ROTATE] = 1.0
    batch = images()
    torch.testing.assert_close(rotate.apply(batch, draws), torch.rot90(rotate.plain(batch), -1, dims=(-2, -1)),
                               atol=1e-5, rtol=1e-5)
    draws[:, ROTATE_ON] = 0.99  # not applied when the draw is not below p_affine
    rotate = transform(off_but(max_rotate=90.0, p_affine=0.75))
    torch.testing.assert_close(rotate.apply(batch, draws), rotate.plain(batch), atol=1e-5, rtol=1e-5)


def lighting_draws(brightness, contrast):
    draws = torch.zeros(1, N_DRAWS, dtype=torch.float64)  # *_ON draws 0: applied (0 < p)
    draws[0, BRIGHTNESS], draws[0, CONTRAST] = brightness, contrast
    return draws


def test_brightness_and_contrast_by_hand_on_a_constant_image():
    gray = torch.full((1, 3, 16, 16), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    light = transform(off_but(max_lighting=0.2, p_lighting=1.0))
    # Brightness draw 1.0 -> b = 0.5 * (1 + 0.2) = 0.6; contrast draw 0.5 -> c = exp(0) = 1.
    # sigmoid(logit(0.2) + logit(0.6)): odds 0.25 * 1.5 = 0.375 -> 0.375 / 1.375 = 3/11;
    # normalised (3/11 - 0.5) / 0.25 = -10/11.
    out = light.apply(gray, lighting_draws(1.0, 0.5))
    torch.testing.assert_close(out, torch.full_like(out, -10 / 11), atol=1e-5, rtol=1e-5)
    # Brightness draw 0.5 -> b = 0.5 (no change); contrast draw 1.0 -> c = exp(-log(0.8)) = 1.25:
    # odds 0.25 ** 1.25 = 0.1767767 -> 0.1767767 / 1.1767767 = 0.1502214; normalised -1.3991144.
    out = light.apply(gray, lighting_draws(0.5, 1.0))
    torch.testing.assert_close(out, torch.full_like(out, (0.1502214 - 0.5) / 0.25), atol=1e-5, rtol=1e-5)
    # Both, brightness first (fastai composes them in that order on the logits):
    # sigmoid((logit(0.2) + logit(0.6)) * 1.25): odds 0.375 ** 1.25 = 0.2934534 -> 0.2268759.
    out = light.apply(gray, lighting_draws(1.0, 1.0))
    torch.testing.assert_close(out, torch.full_like(out, (0.2268759 - 0.5) / 0.25), atol=1e-5, rtol=1e-5)
    # Not applied (draws at or above p_lighting 0.75): the pixels stay as they are.
    draws = lighting_draws(1.0, 1.0)
    draws[0, BRIGHTNESS_ON] = draws[0, CONTRAST_ON] = 0.8
    out = transform(off_but(max_lighting=0.2)).apply(gray, draws)
    torch.testing.assert_close(out, torch.full_like(out, (0.2 - 0.5) / 0.25), atol=1e-5, rtol=1e-5)


def test_warp_homography_takes_the_moved_corners_onto_the_square():
    moved = torch.tensor([[[-1.1, -0.9], [-0.95, 1.2], [1.05, -1.0], [0.9, 0.8]]], dtype=torch.float64)
    corners = torch.tensor([[[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]], dtype=torch.float64)
    matrix = homography(moved, corners)
    mapped = torch.cat([moved, torch.ones(1, 4, 1, dtype=torch.float64)], -1) @ matrix.transpose(1, 2)
    torch.testing.assert_close(mapped[..., :2] / mapped[..., 2:], corners)


def test_default_augmentation_is_reproducible_and_varied():
    batch = images(8, 20, 20)
    full = transform(AugmentSpec(), size=(16, 16))
    first = full.random(batch, torch.Generator().manual_seed(3))
    again = full.random(batch, torch.Generator().manual_seed(3))
    other = full.random(batch, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert first.shape == (8, 3, 16, 16) and torch.isfinite(first).all()
    # Images in [0, 1] stay in [0, 1] before normalising: grid sampling and lighting add no range.
    assert first.min() >= (0 - 0.5) / 0.25 - 1e-5 and first.max() <= (1 - 0.5) / 0.25 + 1e-5


@pytest.mark.parametrize("min_scale", [0.35, 0.75])
def test_random_crop_samples_inside_the_image(min_scale):
    # A crop of area fraction a has side sqrt(a): with min_scale the grid's extent is at least
    # sqrt(min_scale) of the image and the crop never leaves it, so no reflection is needed.
    crop = transform(off_but(min_scale=min_scale))
    matrix = crop.sampling_matrix(crop.draw(256, torch.Generator().manual_seed(0)), (16, 16))
    width, shift = matrix[:, 0, 0], matrix[:, 0, 2]
    assert (width >= math.sqrt(min_scale) - 1e-9).all() and (width <= 1).all()
    assert ((shift.abs() + width) <= 1 + 1e-9).all()


# ---------------------------------------------------------------- random erasing


def test_erasing_by_hand():
    # 8x8 image, draws (on, area, aspect, top, left) = (0, 0.5, 0.5, 0, 0.999): area 0.5 * 0.3 * 64
    # = 9.6 pixels, aspect exp(0) = 1, so a round(sqrt(9.6)) = 3-pixel square; top row 0, left
    # column floor(0.999 * (8 - 3 + 1)) = 5. Every channel of those 9 pixels becomes 0, the mean.
    erasing = transform(off_but(erasing=0.5), size=(8, 8))
    x = torch.ones(2, 3, 8, 8)
    draws = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.999], [0.5, 0.5, 0.5, 0.0, 0.999]], dtype=torch.float64)
    erased = erasing.apply_erasing(x, draws)
    expected = torch.ones(3, 8, 8)
    expected[:, 0:3, 5:8] = 0.0
    assert torch.equal(erased[0], expected)
    # The second image's first draw is not below the probability 0.5: it keeps every pixel.
    assert torch.equal(erased[1], torch.ones(3, 8, 8))
    # A tall rectangle: aspect draw 1 is the ratio 1 / 0.3, area 0.3 * 64 = 19.2 -> rows
    # round(sqrt(19.2 / 0.3)) = 8, columns round(sqrt(19.2 * 0.3)) = 2, at the left edge.
    tall = erasing.apply_erasing(torch.ones(1, 3, 8, 8), torch.tensor([[0.0, 1.0, 1.0, 0.7, 0.0]],
                                                                       dtype=torch.float64))
    assert torch.equal((tall[0, 0] == 0).nonzero()[:, 1].unique(), torch.tensor([0, 1]))
    assert int((tall[0, 0] == 0).sum()) == 16


def test_erasing_is_training_only_and_off_draws_nothing():
    from ledger.training.device import Runtime, resolve_precision

    batch = images(n=64, height=16, width=16)
    for augment in (OFF, None):
        generator = torch.Generator().manual_seed(3)
        state = generator.get_state()
        x = transform(augment).plain(batch)
        assert torch.equal(transform(augment).erase(x.clone(), generator), x)
        assert torch.equal(generator.get_state(), state)  # runs without erasing keep their streams
    on = transform(off_but(erasing=1.0))
    runtime = Runtime(torch.device("cpu"), resolve_precision("fp32", torch.device("cpu")), 1, on,
                      torch.Generator().manual_seed(0))
    zeros_in_training = (runtime.training_batch(batch) == 0).float().mean()
    assert 0.05 < zeros_in_training < 0.3  # mean erased share 15%; 64 images
    assert (runtime.augmented(batch) == 0).float().mean() < 0.01  # TTA's passes keep the pixels
