"""Image folders in the ImageNet layout (one sub-folder per class) as encoded datasets."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import FileStamp, file_stamp
from gkt.data.datasets import DEFAULT_DECODE_SIZE, EncodedImageDataset
from gkt.data.decode import (
    BadImagePolicy,
    ImageIndex,
    bad_image_policy,
    note_skipped,
    read_encoded,
    unreadable_message,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

class FolderImageDataset(EncodedImageDataset):
    """``root/<class>/*.jpg``: files listed (with their file stamps, never opened) up front, decoded per batch."""

    def __init__(self, name: str, files: Sequence[Path], labels: torch.Tensor, class_names: Sequence[str],
                 image_size: int, channels: int, bad_images: BadImagePolicy | None = None,
                 file_stats: Sequence[FileStamp] | None = None, index: ImageIndex | None = None):
        super().__init__(name, labels, class_names, image_size, channels, bad_images)
        self.files = list(files)
        self.file_stats = list(file_stats) if file_stats is not None else \
            [file_stamp(st) for st in map(os.stat, self.files)]
        self.index = index

    def encoded(self, i: int) -> torch.Tensor:
        return read_encoded(self.files[i])

    def source(self, i: int) -> str:
        return str(self.files[i])

    def _take(self, rows: torch.Tensor) -> None:
        self.files = [self.files[i] for i in rows.tolist()]
        self.file_stats = [self.file_stats[i] for i in rows.tolist()]

    def _recorded(self, i: int, reason: str) -> None:
        if self.index is not None:
            self.index.record_bad(str(self.files[i]), self.file_stats[i], reason)

    def content_id(self) -> str:
        return stable_hash([(str(p), *st) for p, st in zip(self.files, self.file_stats)], 64)

    def pixel_stats(self, max_samples: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Cached in the folder's index, keyed by the listing's identity and the decode size."""
        if self.index is None:
            return super().pixel_stats(max_samples)
        key = stable_hash([self.content_id(), self.image_shape, min(max_samples, 256)], 24)
        if key not in self.index.stats:
            self.index.record_stats(key, list(super().pixel_stats(max_samples)))
        mean, std = self.index.stats[key]
        return tuple(mean), tuple(std)


def _list_class_dir(class_dir: Path) -> list[tuple[Path, os.stat_result | str]]:
    """Image files under ``class_dir`` (recursively, sorted, linked folders followed once; hidden files and
    folders such as macOS ``._*`` and ``.ipynb_checkpoints`` left out) with their stat results, or why a
    file cannot be stat'ed (a dangling link); nothing is opened. A folder that cannot be listed is an error."""

    def unlistable(exc: OSError) -> None:
        raise GktError(f"{exc.filename}: cannot list this folder ({exc.strerror}); fix its permissions or "
                       "remove it from the data folder")

    found: list[tuple[Path, os.stat_result | str]] = []
    seen = {os.path.realpath(class_dir)}
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unlistable, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen)
        seen.update(os.path.realpath(os.path.join(dirpath, d)) for d in dirnames)  # linked folders: once each
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                    # a pipe or device would block or never end when read: unreadable, never opened
                    found.append((path, st if stat.S_ISREG(st.st_mode) else
                                  "not a regular file (a pipe or a device)"))
                except OSError as exc:
                    found.append((path, "a link to a missing file" if path.is_symlink() else
                                  f"cannot be read: {exc.strerror}"))
    return found


def load_image_folder(root: str | os.PathLike, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
                      bad_images: BadImagePolicy | None = None, class_names: Sequence[str] | None = None
                      ) -> FolderImageDataset:
    """An ImageNet-layout split directory: one sub-folder per class, class names = folder names. Files are
    listed, not opened: unreadable ones are found when decoded (or known from an earlier command)."""
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise GktError(f"image folder {root} does not exist")
    policy = bad_image_policy(bad_images)
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(class_names) if class_names is not None else found
    if not names:
        raise GktError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise GktError(f"{root}: class folders {unknown} are not among the training classes")
    index = ImageIndex(str(root))
    files: list[Path] = []
    stats: list[FileStamp] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        for path, st in _list_class_dir(class_dir):
            stamp = file_stamp(st) if isinstance(st, os.stat_result) else None
            reason = index.known_bad(str(path), stamp) if stamp is not None else st
            if reason is not None:
                if policy == "fail":
                    raise GktError(unreadable_message(str(path), reason))
                note_skipped(str(path), reason)
                continue
            files.append(path)
            stats.append(stamp)
            labels.append(label)
    index.save()
    dataset = FolderImageDataset(f"folder:{root.resolve()}", files, torch.tensor(labels, dtype=torch.long),
                                 names, image_size, channels, policy, stats, index)
    empty = [names[c] for c, n in enumerate(dataset.class_counts().tolist()) if n == 0]
    if empty and class_names is None:
        raise GktError(f"{root}: class folder(s) {empty} contain no images")
    return dataset
