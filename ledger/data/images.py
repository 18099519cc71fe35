"""Images decoded and resized once to a model's item size (squish, crop or pad, as fastai's Resize)
and kept as one uint8 array (N, 3, H, W), cached on disk, so an epoch indexes memory instead of
decoding files again. Random augmentation then runs on whole batches, on the training device
(see `data/augment.py`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ledger.errors import LedgerError


def _fit(image: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
    """Resize one image to (height, width) as fastai's Resize: squish, center crop, or pad with black."""
    height, width = size
    if method == "squish":
        return image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if method == "crop":
        return ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
    return ImageOps.pad(image, (width, height), Image.Resampling.BILINEAR, color=(0, 0, 0))


def _to_rgb(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PIL's modes I;16* and I, as it opens 16-bit PNG and TIFF) scaled to 8 bits:
    PIL's own convert clips every value above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # 65535 -> 255, 32896 -> 128
    return image.convert("RGB")


def decode_image(path: Path, size: tuple[int, int], method: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            # Opening reads only the header; PIL warns above its limit and refuses at twice it.
            if image.width * image.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            image.load()  # decode now, so a truncated file fails here with its path
            rgb = _fit(_to_rgb(image), size, method)
    except FileNotFoundError:
        raise LedgerError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as e:
        raise LedgerError(
            f"{path}: image too large to decode safely ({e}; PIL's limit is {Image.MAX_IMAGE_PIXELS} pixels)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LedgerError(f"{path}: unreadable or truncated image ({e})") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _cache_key(paths: tuple[Path, ...], size: tuple[int, int], method: str) -> str:
    digest = hashlib.sha1(f"{size}|{method}".encode())
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise LedgerError(f"{path}: image file not found") from None
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _memory_bytes() -> int:
    # All of physical memory, not SC_AVPHYS_PAGES: that counts only free pages, leaving out the page
    # cache the kernel hands back on demand, so right after reading the images it can be a fraction
    # of what is available and would refuse caches that fit.
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _free_disk_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the cache folder is made later; its nearest existing parent's disk
    return shutil.disk_usage(folder).free


def _check_room(needed: int, size: tuple[int, int], label: str, cache_file: Path | None) -> None:
    """Fail in one line before decoding, not with an OOM kill or a full disk an hour later."""
    from ledger.units import format_size

    h, w = size
    what = f"{label} {h if h == w else f'{h}x{w}'}"
    memory = _memory_bytes()
    if needed > memory:
        raise LedgerError(f"{what}: the image cache needs {format_size(needed)}, more than the "
                          f"{format_size(memory)} of memory here; use a smaller size or presize")
    if cache_file is not None:
        free = _free_disk_bytes(cache_file.parent)
        if needed > free:
            raise LedgerError(f"{what}: the image cache needs {format_size(needed)}, more than the "
                              f"{format_size(free)} free on {cache_file.parent}; use a smaller size or free some space")


def is_cached(paths: tuple[Path, ...], size: tuple[int, int], method: str, cache_dir: Path) -> bool:
    """Whether load_images would read these images from the cache instead of decoding them."""
    return (Path(cache_dir) / f"images-{_cache_key(paths, size, method)}.npy").is_file()


def load_images(
    paths: tuple[Path, ...],
    size: tuple[int, int],
    method: str,
    cache_dir: Path | None = None,
    threads: int | None = None,
    label: str = "size",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """All images decoded and resized to (N, 3, H, W) uint8, from the disk cache when the files,
    sizes and times match, else decoded (PIL releases the GIL, so threads help) and cached.
    `label` names the size in errors, e.g. `models[0].size` (or `.presize`). `progress(done, total)`
    is called from this thread as images are decoded (not for a cache hit, which takes no time)."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{_cache_key(paths, size, method)}.npy"
        if cache_file.is_file():
            try:
                return np.load(cache_file, mmap_mode="r")
            except (OSError, ValueError):
                pass  # a damaged cache file is rebuilt below
    _check_room(len(paths) * 3 * size[0] * size[1], size, label, cache_file)
    out = np.empty((len(paths), 3, *size), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = decode_image(paths[i], size, method)

    # decode_image refuses images over PIL's limit itself; this only keeps PIL's warning about them
    # off stderr. Set here, in the calling thread, because warning filters are process-wide.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            # map yields in order, in this thread: the callback never runs on a worker.
            for done, _ in enumerate(pool.map(fill, range(len(paths))), 1):
                if progress is not None:
                    progress(done, len(paths))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, out)
        os.replace(tmp, cache_file)
    return out
