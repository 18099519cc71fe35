"""Batch transforms on the training device: fastai's `aug_transforms` in one sampling pass.

fastai runs its GPU augmentations as an affine pass (flip, warp, rotate, zoom), a random resized
crop, and a lighting pass. Every geometric part is a map from output to input coordinates, and a
crop, affine maps and a perspective warp compose into one 3x3 projective matrix per image; so one
`grid_sample` does the whole geometry, then brightness and contrast act on the logits of the pixels.

Random numbers are drawn on the CPU (a few per image), so one seeded CPU generator reproduces a run
on any device. Differences from fastai, each for simplicity: a crop that would leave the image is
clamped to it (fastai retries ten times, then crops the centre); resizing to the model's size is
part of the one bilinear sample, without antialiasing (as fastai's).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence

import numpy as np

import torch
import torch.nn.functional as F

from ledger.spec.objects import AugmentSpec

# Columns of the uniform [0, 1) draws, one row per image. Fixed, so a seed means the same
# augmentation whatever is switched on.
(AREA, RATIO, CROP_X, CROP_Y, FLIP, DIHEDRAL, WARP_X, WARP_X_ON, WARP_Y, WARP_Y_ON, ROTATE, ROTATE_ON,
 ZOOM, ZOOM_ON, ZOOM_X, ZOOM_Y, BRIGHTNESS, BRIGHTNESS_ON, CONTRAST, CONTRAST_ON) = range(20)
N_DRAWS = 20

# fastai's RandomErasing defaults: at most 30% of the area, aspect ratios from 0.3 to 1 / 0.3.
_MAX_ERASED, _ERASE_ASPECT = 0.3, 0.3

# fastai's Dihedral: the 8 symmetries of the square, as signs and a swap of the axes.
_DIHEDRAL_XS = (1, -1, 1, -1, -1, 1, 1, -1)
_DIHEDRAL_YS = (1, 1, -1, 1, -1, -1, 1, -1)
_DIHEDRAL_SWAP = (0, 0, 0, 1, 0, 1, 1, 1)


class BatchTransform:
    """uint8 (B, 3, h, w) batches -> normalised float batches of the model's size.

    `augment=None`: `random` is `plain`. `crop_ratio` is the random crop's aspect-ratio range;
    fastai's `aug_transforms` passes (1, 1) to RandomResizedCropGPU. `p_flip` is fastai's Flip(p=0.5).
    `memory_format` is the layout the model wants its input in (see train.model_on_device).
    """

    def __init__(self, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 augment: AugmentSpec | None = AugmentSpec(), crop_ratio: tuple[float, float] = (1.0, 1.0),
                 p_flip: float = 0.5, memory_format: torch.memory_format = torch.contiguous_format):
        self.size, self.augment, self.p_flip = tuple(size), augment, p_flip
        self.memory_format = memory_format
        self.log_ratio = (math.log(crop_ratio[0]), math.log(crop_ratio[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def resized(self, size: tuple[int, int]) -> "BatchTransform":
        """The same transform giving batches of `size` (test-time resolution)."""
        other = copy.copy(self)
        other.size = tuple(size)
        return other

    def _normalise(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        mean, std = self.mean.to(x.device) * scale, self.std.to(x.device) * scale
        return (x.float() - mean) / std

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """No randomness: validation, test, and TTA's plain pass."""
        x = self._normalise(images, 255.0)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=self.memory_format)

    def random(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augment is None:
            return self.plain(images)
        return self.apply(images, self.draw(images.shape[0], generator))

    def erase(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random erasing of a normalised training batch, in place (training only: TTA keeps every
        pixel). Off, it draws nothing, so runs without it keep their random streams. timm's
        RandomErasing would draw from Python's and torch's global generators; these five numbers
        per image come from the run's own generator, so a seed repeats a run on any device."""
        if self.augment is None or self.augment.erasing <= 0:
            return x
        return self.apply_erasing(x, torch.rand(x.shape[0], 5, generator=generator, dtype=torch.float64))

    def apply_erasing(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Random erasing as `draws` (B, 5) describe it, in place: image i gets a rectangle set to 0
        (the mean) when draws[i, 0] < `erasing`; its area is uniform in 0-30% of the image, its aspect
        ratio log-uniform in [0.3, 1 / 0.3], its position uniform where it fits (fastai's
        RandomErasing's shapes; fastai fills the rectangle with N(0, 1) noise instead, which would
        cost a random number per pixel)."""
        on, area, aspect, top, left = draws.unbind(1)
        height, width = x.shape[-2:]
        area = area * _MAX_ERASED * height * width
        aspect = torch.exp(_uniform(aspect, math.log(_ERASE_ASPECT), -math.log(_ERASE_ASPECT)))
        rows = torch.sqrt(area * aspect).round().clamp(max=height).long().view(-1, 1, 1)
        cols = torch.sqrt(area / aspect).round().clamp(max=width).long().view(-1, 1, 1)
        top = (top.view(-1, 1, 1) * (height - rows + 1)).long().clamp(max=height - rows)
        left = (left.view(-1, 1, 1) * (width - cols + 1)).long().clamp(max=width - cols)
        ys, xs = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
        inside = ((ys >= top) & (ys < top + rows) & (xs >= left) & (xs < left + cols)
                  & (on < self.augment.erasing).view(-1, 1, 1))
        return x.masked_fill_(inside.unsqueeze(1).to(x.device), 0.0)

    def keyed(self, images: torch.Tensor, keys: Sequence[str], seed: int, stream: int) -> torch.Tensor:
        """The augmentation `keyed_draws` gives each image: a TTA pass that treats an image the same
        whatever shares its batch."""
        if self.augment is None:
            return self.plain(images)
        return self.apply(images, keyed_draws(seed, keys, stream))

    def draw(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, N_DRAWS) uniform numbers on the CPU, all an augmentation of the batch depends on."""
        return torch.rand(batch, N_DRAWS, generator=generator, dtype=torch.float64)

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The augmentation that `draws` (from `draw`, or made by hand in a test) describe."""
        aug = self.augment or AugmentSpec()
        x = images.float()
        matrix = self.sampling_matrix(draws, tuple(x.shape[-2:])).to(device=x.device, dtype=x.dtype)
        # Sampling is linear in the pixel values, so scaling to [0, 1] waits until the image has
        # the (often smaller) output size. Later steps work in place: on a CPU, allocating and
        # filling a new batch-sized tensor per step costs as much as the step itself.
        x = F.grid_sample(x, _projective_grid(matrix, self.size), mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        if aug.max_lighting > 0:
            x = _lighting(x.mul_(1 / 255), draws, aug.max_lighting, aug.p_lighting)
            scale = 1.0
        else:
            scale = 255.0
        mean, std = self.mean.to(x.device) * scale, self.std.to(x.device) * scale
        return x.sub_(mean).div_(std).contiguous(memory_format=self.memory_format)

    def sampling_matrix(self, draws: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, 3): output coordinates (x, y, 1) in [-1, 1] -> input coordinates, projectively.

        fastai's order: the affine pass (flip @ rotate @ zoom, then the warp on its coordinates)
        runs first, the random resized crop on its result; so input = warp(affine(crop(output)))."""
        aug = self.augment or AugmentSpec()
        crop = self._crop(draws, input_size, aug.min_scale)
        affine = self._flip(draws, aug) @ _rotation(draws, aug) @ _zoom(draws, aug)
        return _warp(draws, aug) @ affine @ crop

    def _crop(self, draws: torch.Tensor, input_size: tuple[int, int], min_scale: float) -> torch.Tensor:
        """fastai's RandomResizedCropGPU: area in [min_scale, 1] of the image, aspect ratio (in
        pixels) log-uniform in crop_ratio, position uniform. min_scale 1: the whole image."""
        matrix = _eye(draws)
        if min_scale >= 1:
            return matrix
        height, width = input_size
        area = _uniform(draws[:, AREA], min_scale, 1.0)
        ratio = torch.exp(_uniform(draws[:, RATIO], *self.log_ratio))
        crop_w = torch.sqrt(area * ratio * height / width).clamp(max=1.0)  # fraction of the width
        crop_h = torch.sqrt(area / ratio * width / height).clamp(max=1.0)
        matrix[:, 0, 0], matrix[:, 0, 2] = crop_w, _uniform(draws[:, CROP_X], -1, 1) * (1 - crop_w)
        matrix[:, 1, 1], matrix[:, 1, 2] = crop_h, _uniform(draws[:, CROP_Y], -1, 1) * (1 - crop_h)
        return matrix

    def _flip(self, draws: torch.Tensor, aug: AugmentSpec) -> torch.Tensor:
        matrix = _eye(draws)
        if not aug.do_flip:
            return matrix
        on = draws[:, FLIP] < self.p_flip
        if not aug.flip_vert:  # fastai's Flip: mirror left-right
            matrix[:, 0, 0] = torch.where(on, -1.0, 1.0)
            return matrix
        # fastai's Dihedral: one of 8 symmetries (index 0, the identity, when not applied).
        index = torch.where(on, (draws[:, DIHEDRAL] * 8).long().clamp(max=7), 0)
        xs, ys = (torch.tensor(t, dtype=draws.dtype)[index] for t in (_DIHEDRAL_XS, _DIHEDRAL_YS))
        swap = torch.tensor(_DIHEDRAL_SWAP, dtype=draws.dtype)[index]
        matrix[:, 0, 0], matrix[:, 0, 1] = xs * (1 - swap), xs * swap
        matrix[:, 1, 0], matrix[:, 1, 1] = ys * swap, ys * (1 - swap)
        return matrix


def keyed_draws(seed: int, keys: Sequence[str], stream: int) -> torch.Tensor:
    """(len(keys), N_DRAWS) uniform numbers in [0, 1) that depend on the seed, the image's key and the
    stream (a TTA pass) alone. Hashed, not drawn from a generator: a generator's numbers depend on how
    many came before, so an image would be augmented differently alone than in its folder. BLAKE2b
    gives the same bits on every machine."""
    blocks = -(-N_DRAWS // 8)  # a 64-byte digest holds eight 64-bit words
    words = np.empty((len(keys), blocks * 8), dtype="<u8")
    for row, key in enumerate(keys):
        for block in range(blocks):
            digest = hashlib.blake2b(f"{seed}\0{stream}\0{block}\0{key}".encode(), digest_size=64).digest()
            words[row, block * 8 : (block + 1) * 8] = np.frombuffer(digest, dtype="<u8")
    # The top 53 bits of each word, as a double in [0, 1): exact, and uniform as a generator's.
    return torch.from_numpy((words[:, :N_DRAWS] >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def _eye(draws: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=draws.dtype).repeat(draws.shape[0], 1, 1)


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def _rotation(draws: torch.Tensor, aug: AugmentSpec) -> torch.Tensor:
    """fastai's rotate_mat: angle uniform in +-max_rotate degrees, applied with p_affine."""
    degrees = _uniform(draws[:, ROTATE], -aug.max_rotate, aug.max_rotate) * (draws[:, ROTATE_ON] < aug.p_affine)
    theta = degrees * math.pi / 180
    matrix = _eye(draws)
    matrix[:, 0, 0], matrix[:, 0, 1] = theta.cos(), theta.sin()
    matrix[:, 1, 0], matrix[:, 1, 1] = -theta.sin(), theta.cos()
    return matrix


def _zoom(draws: torch.Tensor, aug: AugmentSpec) -> torch.Tensor:
    """fastai's zoom_mat: zoom uniform in [min_zoom, max_zoom] (1 when not applied), about a
    random centre that keeps the view inside the image."""
    on = draws[:, ZOOM_ON] < aug.p_affine
    scale = 1 / torch.where(on, _uniform(draws[:, ZOOM], aug.min_zoom, aug.max_zoom), 1.0)
    matrix = _eye(draws)
    matrix[:, 0, 0] = matrix[:, 1, 1] = scale
    matrix[:, 0, 2] = (1 - scale) * (2 * draws[:, ZOOM_X] - 1)
    matrix[:, 1, 2] = (1 - scale) * (2 * draws[:, ZOOM_Y] - 1)
    return matrix


def _warp(draws: torch.Tensor, aug: AugmentSpec) -> torch.Tensor:
    """fastai's Warp: the corners move by magnitudes uniform in +-max_warp (each applied with
    p_affine); the homography maps the moved corners back onto the square's corners."""
    on_x, on_y = draws[:, WARP_X_ON] < aug.p_affine, draws[:, WARP_Y_ON] < aug.p_affine
    x_t = _uniform(draws[:, WARP_X], -aug.max_warp, aug.max_warp) * on_x
    y_t = _uniform(draws[:, WARP_Y], -aug.max_warp, aug.max_warp) * on_y
    if not (x_t.any() or y_t.any()):
        return _eye(draws)
    corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=draws.dtype)
    moved = torch.stack([
        torch.stack([-1 - y_t, -1 - x_t], -1), torch.stack([-1 + y_t, 1 + x_t], -1),
        torch.stack([1 + y_t, -1 + x_t], -1), torch.stack([1 - y_t, 1 - x_t], -1),
    ], 1)
    return homography(moved, corners.expand_as(moved))


def homography(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) projective maps taking each of 4 source points (B, 4, 2) onto its target point."""
    u, v = source[..., 0], source[..., 1]
    x, y = target[..., 0], target[..., 1]
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    # x = (a u + b v + c) / (g u + h v + 1), and y likewise: two linear equations per point.
    rows_x = torch.stack([u, v, one, zero, zero, zero, -x * u, -x * v], -1)
    rows_y = torch.stack([zero, zero, zero, u, v, one, -y * u, -y * v], -1)
    system = torch.cat([rows_x, rows_y], 1)
    coefficients = torch.linalg.solve(system, torch.cat([x, y], 1))
    return torch.cat([coefficients, torch.ones_like(u[:, :1])], 1).view(-1, 3, 3)


def _projective_grid(matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """grid_sample's grid: the output pixel centres (align_corners=False) mapped by `matrix`.

    Each coordinate is a row term plus a column term, so only the final sums (and the perspective
    divide, when some image has one) are full-size work."""
    height, width = size
    ys = ((torch.arange(height, device=matrix.device, dtype=matrix.dtype) * 2 + 1) / height - 1).view(1, -1, 1)
    xs = ((torch.arange(width, device=matrix.device, dtype=matrix.dtype) * 2 + 1) / width - 1).view(1, 1, -1)
    m = matrix.view(-1, 9, 1, 1).unbind(1)  # m[0..8]: the matrix's entries, row by row, as (B, 1, 1)
    grid = torch.empty(matrix.shape[0], height, width, 2, device=matrix.device, dtype=matrix.dtype)
    torch.add(m[0] * xs, m[1] * ys + m[2], out=grid[..., 0])
    torch.add(m[3] * xs, m[4] * ys + m[5], out=grid[..., 1])
    if bool((matrix[:, 2, :2] != 0).any()):  # a perspective warp: divide by the third coordinate
        grid.div_((m[6] * xs + (m[7] * ys + m[8])).unsqueeze(-1))
    return grid


def _lighting(x: torch.Tensor, draws: torch.Tensor, max_lighting: float, p: float) -> torch.Tensor:
    """fastai's Brightness then Contrast, composed in logit space: sigmoid((logit(x) + logit(b)) * c),
    b uniform in 0.5 * (1 +- max_lighting) (0.5 when not applied), c log-uniform in
    [1 - max_lighting, 1 / (1 - max_lighting)] (1 when not applied). In place on x."""
    brightness = torch.where(draws[:, BRIGHTNESS_ON] < p,
                             _uniform(draws[:, BRIGHTNESS], 0.5 * (1 - max_lighting), 0.5 * (1 + max_lighting)), 0.5)
    log_limit = -math.log(1 - max_lighting)
    contrast = torch.where(draws[:, CONTRAST_ON] < p, torch.exp(_uniform(draws[:, CONTRAST], -log_limit, log_limit)), 1.0)
    shift = torch.logit(brightness).to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    factor = contrast.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    # eps clamps to [1e-7, 1 - 1e-7] first, as fastai's logit: pure black or white would be infinite.
    return x.logit_(eps=1e-7).add_(shift).mul_(factor).sigmoid_()
