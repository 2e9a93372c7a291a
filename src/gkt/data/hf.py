"""Hugging Face ``datasets`` as a data spec: ``hf:DIR`` (a ``save_to_disk`` directory, or a directory of data
files such as a downloaded hub snapshot of Parquet files) or ``hf:NAME``
(``hf:NAME:CONFIG``) loaded by ``datasets.load_dataset`` — from its cache when offline
(``HF_DATASETS_OFFLINE=1``), downloading where a network exists.

The image column is the ``Image`` feature and the label column the ``ClassLabel`` feature (``image``/
``label`` when there are several); class names come from the ``ClassLabel``. Options after ``?`` choose
others (:data:`HF_OPTIONS`): ``hf:cifar100?label=fine_label``, ``hf:DIR?test=validation``. Images stay
encoded in the Arrow files and are decoded per batch like image folders.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import file_stamp
from gkt.data.datasets import DEFAULT_DECODE_SIZE, EncodedImageDataset
from gkt.data.decode import (
    BadImagePolicy,
    ImageIndex,
    UnreadableImage,
    note_skipped,
    read_encoded,
    unreadable_message,
)
from gkt.data.subsets import carve_split

log = logging.getLogger(__name__)

# Which of a dataset's splits serves as val and test, in order of preference (train is the split named
# train unless ?train= says otherwise; val is carved from it when none is shipped; test falls back to the
# validation split, as for image folders).
SPLIT_NAMES = {"val": ("validation", "val", "valid"), "test": ("test", "validation", "val", "valid")}

# The options of an ``hf:`` spec (``hf:PATH?label=fine_label&test=validation``): option -> what it sets.
HF_OPTIONS = {"image": "the image column (an Image feature)", "label": "the label column (a ClassLabel feature)",
              "train": "the dataset split that serves as train", "val": "the split that serves as val",
              "test": "the split that serves as test"}
HF_EXAMPLES = {"image": "?image=img", "label": "?label=fine_label", "train": "?train=train", "val": "?val=validation",
               "test": "?test=validation"}


HOW_TO = {"image": 'store images as an Image feature: ds = ds.cast_column("image", datasets.Image()) (from bytes '
                   "or file paths), then save_to_disk again; pixel arrays are not supported",
          "label": 'store labels as a ClassLabel: ds.cast_column("label", datasets.ClassLabel(names=[...])) for '
                   'integers, ds.class_encode_column("label") for strings, then save_to_disk again (one label '
                   "per image: multi-label and regression data are not supported)"}


@functools.cache
def _note(message: str) -> None:
    """Log ``message`` once per process (a choice made for every split of a data set)."""
    log.info("%s", message)


def _column(features: Any, kind: type, preferred: tuple[str, ...], what: str, source: str,
            chosen: str | None = None) -> str:
    """The ``what`` column: ``chosen`` (the spec's option), else the first of ``preferred`` of type ``kind``,
    else the first of that type."""
    columns = [name for name, feature in features.items() if isinstance(feature, kind)]
    found = ", ".join(f"{n} ({type(f).__name__})" for n, f in features.items())
    if chosen is not None:
        if chosen not in columns:
            raise GktError(f"{source}: {what}={chosen} is not {'an' if what == 'image' else 'a'} {what} column (a datasets.{kind.__name__} "
                           f"feature; its columns: {found})" + ("" if columns else f"; {HOW_TO[what]}"))
        return chosen
    if not columns:
        raise GktError(f"{source}: no {what} column (a datasets.{kind.__name__} feature; its columns: {found}); "
                       f"{HOW_TO[what]}")
    if len(columns) > 1 and not any(c in columns for c in preferred):
        _note(f"{source.rpartition(':')[0] or source}: {len(columns)} {what} columns ({', '.join(columns)}); using "
              f"{columns[0]} (choose one with ?{what}=COLUMN)")
    return next((c for c in preferred if c in columns), columns[0])


class HFImageDataset(EncodedImageDataset):
    """Rows of a Hugging Face ``datasets.Dataset`` with an ``Image`` and a ``ClassLabel`` column; with
    ``class_names`` (another split's), labels are mapped onto those names."""

    def __init__(self, name: str, table: Any, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
                 bad_images: BadImagePolicy | None = None, class_names: Sequence[str] | None = None,
                 image_column: str | None = None, label_column: str | None = None):
        import datasets

        table = table.with_format(None)  # a saved format (torch, pandas, arrow, some columns) changes rows
        image_col = _column(table.features, datasets.Image, ("image", "img"), "image", name, image_column)
        label_col = _label_column(table.features, name, label_column)
        self.table = table.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        self.image_col, self.origin = image_col, name
        self.rows = torch.arange(len(table))
        labels = torch.from_numpy(_label_values(table, label_col))
        if len(labels) and labels.min() < 0:
            raise GktError(f"{name}: {(labels < 0).sum().item()} rows have no label ({label_col} = -1 or null); "
                           "gkt needs labelled rows: name a labelled split with ?train=, ?val= or ?test=SPLIT "
                           "(unlabelled data sets are not supported, not even for --unlabelled transfer)")
        names = list(table.features[label_col].names)
        if class_names is not None and names != list(class_names):
            unknown = [n for n in names if n not in class_names]
            if unknown:
                raise GktError(f"{name}: its classes {unknown[:5]} are not among the train split's classes "
                               f"({', '.join(list(class_names)[:5])}, ...); save every split with the same ClassLabel")
            labels = torch.tensor([list(class_names).index(n) for n in names], dtype=torch.long)[labels]
            names = list(class_names)
        super().__init__(name, labels, names, image_size, channels, bad_images)
        self._identity = _table_identity(self.table, image_col)
        self._leave_out_known_bad_rows()

    def _leave_out_known_bad_rows(self) -> None:
        """Rows an earlier command found unreadable in this very table: fail at once, or leave them out now
        (so the data has the same identity as after that command's pass, and its stored predictions serve)."""
        self.index = ImageIndex(f"hf:{self._identity}")
        bad = {int(name): reason for name in list(self.index.bad) if (reason := self.index.known_bad(name))}
        if not bad:
            return
        keep = torch.tensor([int(r) not in bad for r in self.rows], dtype=torch.bool)
        for row in self.rows[~keep].tolist():
            if self.bad_images == "fail":
                raise GktError(unreadable_message(f"{self.origin} row {row}", bad[row]))
            note_skipped(f"{self.origin} row {row}", bad[row])
        self.rows, self.labels = self.rows[keep], self.labels[keep]

    def _recorded(self, i: int, reason: str) -> None:
        self.index.record_bad(str(int(self.rows[i])), (), reason)

    def encoded(self, i: int) -> torch.Tensor:
        cell = self.table[int(self.rows[i])][self.image_col] or {}  # None: a row without an image
        if cell.get("bytes"):
            return torch.frombuffer(bytearray(cell["bytes"]), dtype=torch.uint8)
        if cell.get("path"):
            return read_encoded(cell["path"])
        raise UnreadableImage("the row holds no image")

    def source(self, i: int) -> str:
        return f"{self.origin} row {int(self.rows[i])}"

    def _take(self, rows: torch.Tensor) -> None:
        self.rows = self.rows[rows]

    def content_id(self) -> str:
        """What the images read are, and the rows taken: the Arrow files' stamps (a re-save writes new
        files; :func:`~gkt.core.io.file_stamp`), or the image bytes of a table held in memory; the stamps of
        the image files that rows only point to; and the table's fingerprint (its history)."""
        return stable_hash([self._identity, hashlib.sha256(self.rows.numpy().tobytes()).hexdigest()], 64)


def _table_identity(table: Any, image_col: str) -> str:
    import pyarrow.compute as pc

    column = table.data.column(image_col)
    files = sorted(c["filename"] for c in table.cache_files)
    if files:
        stored: Any = [(f, *file_stamp(os.stat(f))) for f in files]
    else:
        digest = hashlib.sha256()
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(memoryview(buffer))
        stored = digest.hexdigest()
    pointed = pc.filter(pc.struct_field(column, "path"), pc.is_null(pc.struct_field(column, "bytes"))).to_pylist()
    linked = [(f, *(file_stamp(os.stat(f)) if f and os.path.exists(f) else ())) for f in pointed]
    return stable_hash([table._fingerprint, stored, linked], 64)


# The files datasets.save_to_disk writes (a DatasetDict, or a single Dataset).
SAVED_MARKERS = ("dataset_dict.json", "state.json")


def _load_dict(path: str) -> dict[str, Any]:
    """The splits of ``path``: a ``save_to_disk`` directory, or a dataset name for ``load_dataset``."""
    import datasets
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    name, _, config = path.partition(":")
    if not Path(path).is_dir() and name in _PACKAGED_DATASETS_MODULES:
        raise GktError(f"hf:{path}: {name} is a datasets loader, not a dataset; for an image folder use "
                       "folder:PATH, for a saved dataset hf:DIR")
    saved = Path(path).is_dir() and any((Path(path) / f).is_file() for f in SAVED_MARKERS)
    try:
        if saved:
            loaded = datasets.load_from_disk(path)
        elif Path(path).is_dir():  # data files (a hub snapshot: Parquet, Arrow, ...), read by their builder
            loaded = datasets.load_dataset(path)
        else:
            if not any(getattr(datasets.config, flag, False) for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
                log.info("hf:%s: asking the Hugging Face hub for it (without a network this waits for time-outs; "
                         "set HF_DATASETS_OFFLINE=1 to read the local datasets cache only)", path)
            loaded = datasets.load_dataset(name, config or None)
    except Exception as exc:  # noqa: BLE001 — the datasets library raises many types for unusable input
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        raise GktError(f"hf:{path}: cannot load this saved dataset directory ({reason}); check that "
                       "datasets.load_from_disk reads it (an empty split can break it)" if saved else
                       f"hf:{path}: cannot load its data files ({reason}); check that datasets.load_dataset reads "
                       "this directory" if Path(path).is_dir()
                       else f"hf:{path}: not a saved Hugging Face dataset directory, nor a dataset in the "
                       f"local datasets cache ({reason})") from exc
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def _label_column(features: Any, source: str, chosen: str | None = None) -> str:
    import datasets

    return _column(features, datasets.ClassLabel, ("label", "labels"), "label", source, chosen)


def _label_values(table: Any, label_column: str) -> Any:
    """The label column as int64 NumPy, a missing (null) label as -1 (ClassLabel's "no label")."""
    import pyarrow.compute as pc

    column = table.with_format(None).data.column(label_column)
    return pc.fill_null(column, -1).to_numpy().astype("int64", copy=True)


def _unlabelled(table: Any, label_column: str) -> bool:
    """Whether no row of ``table`` has a label (a hub test split held back: -1 or null throughout)."""
    labels = _label_values(table, label_column)
    return len(labels) > 0 and bool((labels < 0).all())


def parse_hf_path(path: str) -> tuple[str, dict[str, str]]:
    """``PATH?k=v&...`` to the path and its options (:data:`HF_OPTIONS`); a ``?`` inside the name of an existing
    directory is part of the path."""
    from urllib.parse import parse_qsl

    if "?" not in path or Path(path).exists():
        return path, {}
    cuts = [i for i, c in enumerate(path) if c == "?"]
    cut = next((i for i in reversed(cuts) if Path(path[:i]).exists()), cuts[0])  # a directory named x?y, then options
    path, query = path[:cut], path[cut + 1:]
    pairs = parse_qsl(query, keep_blank_values=True)
    options = dict(pairs)
    repeated = sorted({k for k, _ in pairs if [p for p, _ in pairs].count(k) > 1})
    if repeated:
        raise GktError(f"hf:{path}: option {repeated[0]} given twice; give each option once")
    for key, value in options.items():
        if key not in HF_OPTIONS:
            raise GktError(f"hf:{path}: unknown option {key!r}; the options are "
                           + ", ".join(f"{k} ({v})" for k, v in HF_OPTIONS.items()))
        if not value:
            raise GktError(f"hf:{path}: option {key}= needs a value (e.g. {HF_EXAMPLES[key]})")
    return path, options


def hf_split(split: str, *, path: str | None, data_dir: str | None = None, val_fraction: float = 0.1,
             seed: int = 0, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
             bad_images: BadImagePolicy | None = None) -> EncodedImageDataset:
    """The ``hf:`` data spec of :func:`gkt.data.load_split` (``data_dir`` does not apply). A split whose rows
    are all unlabelled (-1 or null, as hub test splits often are) is passed over for the next candidate
    unless the spec names it."""
    path, options = parse_hf_path(path or "")
    if not path:
        raise GktError("data spec hf: needs a directory or dataset name, e.g. hf:./my_dataset or hf:ORG/NAME")
    splits = _load_dict(path)
    for key in ("train", "val", "test"):
        if key in options and options[key] not in splits:
            raise GktError(f"hf:{path}: {key}={options[key]} is not one of its splits ({', '.join(splits)})")
    columns = {"image_column": options.get("image"), "label_column": options.get("label")}
    train = options.get("train", "train")
    classes = None  # every split is labelled in the train split's class names
    if train in splits:
        with contextlib.suppress(GktError):  # a train split without labels: each split keeps its own
            features = splits[train].features
            classes = list(features[_label_column(features, f"hf:{path}:{train}", columns["label_column"])].names)
    if split != "train" and options.get(split) == train:
        raise GktError(f"hf:{path}: {split}={train} is the split that serves as train; evaluating on the training "
                       f"data would pass off a wrong result: choose another split for {split}")

    def shipped(key: str) -> str | None:
        """The dataset split serving as ``key`` (val or test): the one named, else the first labelled candidate
        that is not the train split."""
        if key in options:
            return options[key]
        for name in SPLIT_NAMES[key]:
            if name in splits and name != train:
                if not _unlabelled(splits[name], _label_column(splits[name].features, f"hf:{path}:{name}",
                                                               columns["label_column"])):
                    return name
                log.info("hf:%s: its split %s has no labels (-1 or null throughout); passed over for %s", path,
                         name, key)
        return None

    name = None if split == "train" else shipped(split)
    if name is not None:
        return HFImageDataset(f"hf:{path}:{name}", splits[name], image_size, channels, bad_images, classes, **columns)
    if split == "test":
        raise GktError(f"hf:{path}: no labelled test or validation split to evaluate on (it has "
                       f"{', '.join(splits)}; name one with ?test=SPLIT)")
    if train not in splits:
        raise GktError(f"hf:{path}: no train split (it has {', '.join(splits)}; name one with ?train=SPLIT)")
    whole = HFImageDataset(f"hf:{path}:{train}", splits[train], image_size, channels, bad_images, **columns)
    if split == "train" and shipped("val") is not None:
        return whole
    # no val split shipped: val is carved from train, and train is the rest (as for folders), never overlapping
    return carve_split(whole, split, val_fraction, seed, f"hf:{path}: no validation split; carve one with "
                       "--val-fraction > 0")
