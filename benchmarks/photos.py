"""Photo-like JPEGs for the benchmarks that decode images: smooth, structured colour patterns of varied sizes
and aspect ratios with sensor-like noise, in ImageNet-layout class folders (numpy and PIL only, so the GPU
machine's image can make them)."""

from __future__ import annotations

from pathlib import Path


def photo_jpegs(root: Path, count: int, classes: int, sizes: tuple[int, int], quality: int, seed: int = 0) -> Path:
    """``count`` JPEGs with sides drawn in ``[sizes[0], sizes[1])`` px, image ``i`` in folder ``root/c{i % classes}``
    (three digits); returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(*sizes, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        freq, phase = rng.uniform(2, 12, 3), rng.uniform(0, 6.3, 3)
        img = np.stack([np.sin(freq[k] * (xx * np.cos(phase[k]) + yy * np.sin(phase[k])) * 6.3 + phase[k])
                        for k in range(3)], -1)
        img = (img * 90 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        folder = root / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=quality)
    return root
