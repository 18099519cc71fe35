"""A held-out competition unlike Fashion-MNIST, for checking that a spec's entries train on other
data: noisy colour images of shapes (40 wide, 32 high) on cluttered coloured backgrounds, each
shape at a random position, scale, small rotation and colour. Numpy and PIL only; the same seed
writes the same folder.

    python bench/heldout_colour.py DIR [--seed 0] [--train-per-class 500] [--test 1500]

The folder has the layout `ledger data fashion-mnist` writes (Kaggle's Paddy layout):

    train_images/<label>/<image_id>   40x32 RGB PNGs
    train.csv                         image_id,label
    test_images/<image_id>
    sample_submission.csv             image_id,label (placeholder labels)
    solution.csv                      image_id,label (true labels, same order as the sample)

so a spec points at it by changing only `data.root` (`labels: train.csv`).
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 40, 32
SS = 4  # supersampling factor for the drawn shapes (anti-aliased edges after the downscale)
CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "bars", "diamond", "crescent", "ex")
MARKER = ".ledger-competition"  # so `ledger data ... --force` style replacement recognises the folder


def _rotate(points, angle, cx, cy):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _poly_regular(cx, cy, r, n, start):
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, angle: float,
                fill, bg) -> None:
    """One shape of radius ~r centred at (cx, cy) (supersampled coordinates), in colour `fill`."""
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=bg)
    elif name == "square":
        s = r * 0.85
        draw.polygon(_rotate([(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)],
                             angle, cx, cy), fill=fill)
    elif name == "diamond":
        draw.polygon(_poly_regular(cx, cy, r, 4, angle), fill=fill)  # a square on its corner
    elif name == "triangle":
        draw.polygon(_poly_regular(cx, cy, r, 3, -math.pi / 2 + angle), fill=fill)
    elif name == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + angle + math.pi * k / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        draw.polygon(points, fill=fill)
    elif name in ("cross", "ex"):
        w = r * 0.32
        base = angle + (math.pi / 4 if name == "ex" else 0.0)
        for arm in (0.0, math.pi / 2):
            draw.polygon(_rotate([(cx - r, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx - r, cy + w)],
                                 base + arm, cx, cy), fill=fill)
    elif name == "bars":
        h = r * 0.22
        for k in (-1, 0, 1):
            y = cy + k * r * 0.7
            draw.polygon(_rotate([(cx - r, y - h), (cx + r, y - h), (cx + r, y + h), (cx - r, y + h)],
                                 angle, cx, cy), fill=fill)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        dx, dy = r * 0.5 * math.cos(angle), r * 0.5 * math.sin(angle)
        draw.ellipse([cx - r + dx, cy - r + dy - r * 0.1, cx + r + dx, cy + r + dy - r * 0.1], fill=bg)
    else:
        raise ValueError(name)


def _colour(rng: np.random.Generator, avoid=None):
    """A random saturated-ish colour, at least some distance from `avoid` (the background's mean)."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if avoid is None or np.abs(c - avoid).sum() > 180:
            return tuple(int(v) for v in c)
    return tuple(int(255 - v) for v in avoid)


def _background(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A colour gradient with clutter: lines, dots and small blobs in other colours."""
    W, H = WIDTH * SS, HEIGHT * SS
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, W if rng.random() < 0.5 else H)
    ramp = a[None, :] * (1 - t[:, None]) + b[None, :] * t[:, None]
    if len(t) == W:
        arr = np.broadcast_to(ramp[None, :, :], (H, W, 3))
    else:
        arr = np.broadcast_to(ramp[:, None, :], (H, W, 3))
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 5)):  # clutter lines
        x0, y0, x1, y1 = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0, W), rng.uniform(0, H)
        draw.line([x0, y0, x1, y1], fill=_colour(rng), width=SS)
    for _ in range(rng.integers(1, 5)):  # dots and small blobs
        x, y, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.5, 2.5) * SS
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    return img, arr.reshape(-1, 3).mean(0)


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """One HEIGHT x WIDTH x 3 uint8 image of class `label`."""
    img, mean = _background(rng)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(6.0, 12.0) * SS  # radius in supersampled pixels: 12-24 px across
    cx = rng.uniform(r, WIDTH * SS - r)
    cy = rng.uniform(r, HEIGHT * SS - r)
    angle = rng.uniform(-0.3, 0.3)  # about +-17 degrees
    fill = _colour(rng, avoid=mean)
    # The "background" inside rings and crescents: the local background mean, roughly.
    _draw_shape(draw, CLASSES[label], cx, cy, r, angle, fill, tuple(int(v) for v in mean))
    img = img.resize((WIDTH, HEIGHT), Image.BILINEAR)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    arr = np.asarray(img).astype(np.float32)
    arr += rng.normal(0, rng.uniform(5, 20), arr.shape)  # Gaussian noise
    salt = rng.random(arr.shape[:2]) < rng.uniform(0.0, 0.02)  # pixel noise: random colours
    arr[salt] = rng.integers(0, 256, (int(salt.sum()), 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def write(out_dir: Path, seed: int = 0, train_per_class: int = 600, test: int = 1500, force: bool = False) -> dict:
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not force:
            raise SystemExit(f"{out_dir}: exists; pass --force to replace it")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
            raise SystemExit(f"{out_dir}: not a folder this script wrote (no {MARKER})")
        shutil.rmtree(out_dir)
    rng = np.random.default_rng(seed)
    n_train = train_per_class * len(CLASSES)
    train_labels = np.repeat(np.arange(len(CLASSES)), train_per_class)
    test_labels = rng.integers(0, len(CLASSES), test)
    ids = 100_000 + rng.permutation(900_000)[: n_train + test]
    for name in CLASSES:
        (out_dir / "train_images" / name).mkdir(parents=True)
    (out_dir / "test_images").mkdir()
    train_rows = []
    for image_id, label in zip(ids[:n_train], train_labels):
        name = f"{image_id}.png"
        Image.fromarray(render(rng, int(label))).save(out_dir / "train_images" / CLASSES[label] / name,
                                                      compress_level=1)
        train_rows.append((name, CLASSES[label]))
    test_rows = []
    for image_id, label in zip(ids[n_train:], test_labels):
        name = f"{image_id}.png"
        Image.fromarray(render(rng, int(label))).save(out_dir / "test_images" / name, compress_level=1)
        test_rows.append((name, CLASSES[label]))
    train_rows.sort(key=lambda row: (row[1], row[0]))
    (out_dir / "train.csv").write_text("image_id,label\n" + "".join(f"{i},{l}\n" for i, l in train_rows))
    (out_dir / "solution.csv").write_text("image_id,label\n" + "".join(f"{i},{l}\n" for i, l in test_rows))
    (out_dir / "sample_submission.csv").write_text(
        "image_id,label\n" + "".join(f"{i},{CLASSES[0]}\n" for i, _ in test_rows))
    (out_dir / MARKER).write_text(f"written by bench/heldout_colour.py (seed {seed})\n")
    return {"out_dir": str(out_dir), "train_images": n_train, "test_images": test, "classes": len(CLASSES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test", type=int, default=1500)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--preview", type=Path, help="also write a grid of 10 images a class to this PNG")
    args = parser.parse_args()
    print(write(args.out_dir, args.seed, args.train_per_class, args.test, args.force))
    if args.preview:
        rng = np.random.default_rng(args.seed + 1)
        grid = np.concatenate([np.concatenate([render(rng, c) for _ in range(10)], axis=1)
                               for c in range(len(CLASSES))], axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.preview)


if __name__ == "__main__":
    main()
