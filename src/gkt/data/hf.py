"""Hugging Face ``datasets`` as a data spec: ``hf:DIR`` (a ``save_to_disk`` directory) or ``hf:NAME``
(``hf:NAME:CONFIG``) loaded by ``datasets.load_dataset`` — from its cache when offline
(``HF_DATASETS_OFFLINE=1``), downloading where a network exists.

The image column is the ``Image`` feature and the label column the ``ClassLabel`` feature (``image``/
``label`` when there are several); class names come from the ``ClassLabel``. Images stay encoded in the
Arrow files and are decoded per batch like image folders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.data.datasets import DEFAULT_DECODE_SIZE, EncodedImageDataset
from gkt.data.decode import BadImagePolicy, UnreadableImage, read_encoded
from gkt.data.subsets import carve_split

# Which of a dataset's splits serves each gkt split, in order of preference (val is carved from train
# when none is shipped; test falls back to the validation split, as for image folders).
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"),
               "test": ("test", "validation", "val", "valid")}


def _column(features: Any, kind: type, preferred: tuple[str, ...], what: str, source: str) -> str:
    columns = [name for name, feature in features.items() if isinstance(feature, kind)]
    if not columns:
        found = ", ".join(f"{n} ({type(f).__name__})" for n, f in features.items())
        raise GktError(f"{source}: no {what} column (a datasets.{kind.__name__} feature); its columns: {found}")
    return next((c for c in preferred if c in columns), columns[0])


class HFImageDataset(EncodedImageDataset):
    """Rows of a Hugging Face ``datasets.Dataset`` with an ``Image`` and a ``ClassLabel`` column."""

    def __init__(self, name: str, table: Any, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
                 bad_images: BadImagePolicy | None = None):
        import datasets

        image_col = _column(table.features, datasets.Image, ("image", "img"), "image", name)
        label_col = _column(table.features, datasets.ClassLabel, ("label", "labels"), "label", name)
        self.table = table.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        self.image_col = image_col
        self.rows = torch.arange(len(table))
        labels = torch.tensor(table[label_col], dtype=torch.long)
        if len(labels) and labels.min() < 0:
            raise GktError(f"{name}: {(labels < 0).sum().item()} rows have no label ({label_col} = -1); "
                           "gkt needs labelled rows (use a labelled split)")
        super().__init__(name, labels, table.features[label_col].names, image_size, channels, bad_images)

    def encoded(self, i: int) -> torch.Tensor:
        cell = self.table[int(self.rows[i])][self.image_col]
        if cell.get("bytes"):
            return torch.frombuffer(bytearray(cell["bytes"]), dtype=torch.uint8)
        if cell.get("path"):
            return read_encoded(cell["path"])
        raise UnreadableImage("the row holds no image")

    def source(self, i: int) -> str:
        return f"{self.name} row {int(self.rows[i])}"

    def _take(self, rows: torch.Tensor) -> None:
        self.rows = self.rows[rows]

    def content_id(self) -> str:
        """The Arrow table's own fingerprint (a hash of its contents and history) and the rows taken."""
        return stable_hash([self.table._fingerprint, hashlib.sha256(self.rows.numpy().tobytes()).hexdigest()], 64)


def _load_dict(path: str) -> dict[str, Any]:
    """The splits of ``path``: a ``save_to_disk`` directory, or a dataset name for ``load_dataset``."""
    import datasets

    try:
        if Path(path).is_dir():
            loaded = datasets.load_from_disk(path)
        else:
            name, _, config = path.partition(":")
            loaded = datasets.load_dataset(name, config or None)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        raise GktError(f"hf:{path}: not a saved Hugging Face dataset directory, nor a dataset in the local "
                       f"datasets cache ({type(exc).__name__}: {exc})") from exc
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def hf_split(split: str, *, path: str | None, data_dir: str | None = None, val_fraction: float = 0.1,
             seed: int = 0, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
             bad_images: BadImagePolicy | None = None) -> EncodedImageDataset:
    """The ``hf:`` data spec of :func:`gkt.data.load_split` (``data_dir`` does not apply)."""
    if not path:
        raise GktError("data spec hf: needs a directory or dataset name, e.g. hf:./my_dataset or hf:ORG/NAME")
    splits = _load_dict(path)
    for name in SPLIT_NAMES[split]:
        if name in splits:
            return HFImageDataset(f"hf:{path}:{name}", splits[name], image_size, channels, bad_images)
    if split == "test":
        raise GktError(f"hf:{path}: no test or validation split to evaluate on (it has {', '.join(splits)})")
    if "train" not in splits:
        raise GktError(f"hf:{path}: no train split (it has {', '.join(splits)})")
    train = HFImageDataset(f"hf:{path}:train", splits["train"], image_size, channels, bad_images)
    return carve_split(train, split, val_fraction, seed, f"hf:{path}: no validation split; carve one with "
                       "--val-fraction > 0")
