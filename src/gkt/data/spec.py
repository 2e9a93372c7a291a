"""Data specs: one string names a data set for every verb, ``BASE[CLASSES]@DOMAIN``.

- ``BASE``: a kind of :data:`DATA_SPEC_LOADERS`: ``fmnist`` (embedded default), ``folder:PATH`` (ImageNet
  layout: PATH/train/<class>/..., PATH/val/...), ``digits`` (scikit-learn's digits at 28x28).
- ``[CLASSES]`` (optional): keep only these classes, relabelled ``0..k-1`` in the order given; indices
  and ranges (``[5-9]``, ``[1,3]``, ``[0-2,8]``) or class names (``folder:PATH[cat,dog]``).
- ``@DOMAIN`` (optional): a registered pixel transform of :mod:`gkt.data.domains` (``fmnist@edges``).

E.g. ``fmnist[0-4]@edges``: the edge maps of Fashion-MNIST's first five classes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gkt.core.errors import GktError
from gkt.core.limits import MAX_LISTED_CLASSES, check_size
from gkt.core.registry import Registry
from gkt.data.datasets import DEFAULT_DECODE_SIZE, ImageDataset
from gkt.data.decode import BadImagePolicy
from gkt.data.digits import digits_split
from gkt.data.domains import DOMAINS, apply_domain
from gkt.data.fmnist import load_fashion_mnist
from gkt.data.folder import load_image_folder
from gkt.data.hf import hf_split
from gkt.data.subsets import carve_split, class_subset

Split = Literal["train", "val", "test"]


# Data set kinds: kind -> function loading one split with the keyword arguments of :func:`load_split`
# (``split, *, path, data_dir, val_fraction, seed, image_size, channels, bad_images``); ``path`` is the
# text after ``kind:`` (None if there is none). Register a new data set here.
DATA_SPEC_LOADERS: Registry[Callable[..., ImageDataset]] = Registry("data set")
DATA_SPEC_LOADERS["digits"] = digits_split
DATA_SPEC_LOADERS["hf"] = hf_split  # a Hugging Face datasets directory (save_to_disk) or cached dataset name

# The kinds whose loader reads ``data_dir`` (``--data-dir``: where Fashion-MNIST's files are) when the spec
# names no directory of its own; no other kind reads it.
DATA_DIR_KINDS = ("fmnist",)

DOMAIN_SEPARATOR = "@"
FMNIST_NAMES = ("fmnist", "fashion-mnist", "fashion_mnist")
SYNTAX = ("BASE[CLASSES]@DOMAIN, e.g. fmnist, fmnist[5-9], digits[1,3], fmnist[0-4]@edges, folder:PATH[cat,dog], "
          "hf:DIR, hf:ORG/NAME")

ClassList = tuple[int | str, ...]  # class indices and/or class names, ranges expanded


def _names_a_path(rest: str) -> bool:
    """Whether ``rest`` (a spec after ``KIND:``), without its class list and ``?options``, is an existing path
    (then an ``@`` in it is part of the path, not a domain)."""
    if rest.endswith("]") and _class_list_start(rest) > 0:
        rest = rest[:_class_list_start(rest)]
    return os.path.exists(rest) or any(os.path.exists(rest[:i]) for i, c in enumerate(rest) if c == "?")


def _class_list_start(base: str) -> int:
    """Where the class list ending ``base`` opens: its ``[``, not one inside a quoted class name (-1: none)."""
    quoted = False
    for i in range(len(base) - 2, -1, -1):
        if base[i] == '"':
            quoted = not quoted
        elif base[i] == "[" and not quoted:
            return i
    return -1


def _class_list_entries(text: str, where: str) -> list[tuple[str, bool]]:
    """The comma-separated entries of a class list as ``(text, quoted)``: an entry in double quotes may hold
    commas (ImageNet's names do: ``"tench, Tinca tinca"``) and doubled quotes (``""`` for ``"``), as in CSV."""
    entries: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            name, i = [], i + 1
            while True:
                end = text.find('"', i)
                if end < 0:
                    raise GktError(f"{where}unclosed quote in the class list {text!r}")
                name.append(text[i:end])
                if text[end + 1:end + 2] != '"':
                    break
                name.append('"')
                i = end + 2
            entries.append(("".join(name), True))
            i = end + 1
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] != ",":
                raise GktError(f"{where}text after a quoted class name in {text!r}; separate entries with commas")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            entries.append((text[i:end].strip(), False))
            i = end
        if i >= n:
            return entries
        i += 1  # the comma


def parse_class_list(text: str, spec: str | None = None) -> ClassList:
    """``"0-4"``, ``"5,7,9"``, ``"0-2,8"`` or ``"cat,dog"`` (class names; in double quotes where a name holds
    a comma or looks like a number: ``'"tench, Tinca tinca",goldfish'``) to a tuple of indices and names."""
    where = f"data spec {spec!r}: " if spec else ""
    entries: list[int | str] = []
    for part, quoted in _class_list_entries(text, where):
        if not part:
            raise GktError(f"{where}empty entry in the class list {text!r}; use e.g. [0-4], [5,7] or [cat,dog]")
        if quoted:
            entries.append(part)
        elif part.isdigit():
            entries.append(int(part))
        elif re.fullmatch(r"\d+\s*-\s*\d+", part):
            lo, hi = (int(v) for v in part.split("-"))
            if lo > hi:
                raise GktError(f"{where}class range {part!r} runs backwards; write it low-high, e.g. 5-9")
            check_size(f"{where}class range {part!r}", len(entries) + hi - lo + 1, MAX_LISTED_CLASSES,
                       "classes", "a data set has far fewer classes: check the range")
            entries += range(lo, hi + 1)
        else:
            entries.append(part)
    return tuple(entries)


def format_class_list(classes: Sequence[int | str]) -> str:
    """The text :func:`parse_class_list` reads back as ``classes`` (names quoted where they need it)."""
    def entry(c: int | str) -> str:
        if isinstance(c, int):
            return str(c)
        plain = c == c.strip() and not re.search(r'[,"\[\]]', c) and not re.fullmatch(r"[\d\s-]*", c)
        return c if plain else '"' + c.replace('"', '""') + '"'
    return ",".join(map(entry, classes))


def resolve_classes(classes: Sequence[int | str], class_names: Sequence[str], what: str) -> list[int]:
    """Class indices of ``classes`` (indices kept, names looked up, case-insensitively if need be)."""
    exact = {name: i for i, name in enumerate(class_names)}
    folded = {name.lower(): i for i, name in enumerate(class_names)}
    indices = []
    for entry in classes:
        if isinstance(entry, int):
            indices.append(entry)
        elif entry in exact or entry.lower() in folded:
            indices.append(exact.get(entry, folded.get(entry.lower())))
        else:
            raise GktError(f"{what}: no class named {entry!r}; its classes are {', '.join(class_names)} "
                           f"(or use indices 0-{len(class_names) - 1})")
    return indices


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec (see the module docstring for the syntax)."""

    kind: str
    path: str | None = None
    domain: str | None = None
    classes: ClassList | None = None

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        text = spec.strip()
        base, sep, domain = text.rpartition(DOMAIN_SEPARATOR)
        if sep and ("/" in domain or (domain not in DOMAINS and _names_a_path(text.partition(":")[2]))):
            sep = ""  # an '@' inside a path (user@host/..., an existing folder named x@y), not a domain
        if not sep:
            base, domain = text, None
        elif not (base and domain):
            raise GktError(f"data spec {spec!r}: a domain is written BASE@DOMAIN (in full: {SYNTAX})")
        elif "[" in domain or "]" in domain:
            raise GktError(f"data spec {spec!r}: the class list comes before the domain ({SYNTAX})")
        classes = None
        if base.endswith("]"):
            opening = _class_list_start(base)
            if opening < 0 and base.rfind("[") > 0:  # every [ sits after an odd quote
                raise GktError(f"data spec {spec!r}: unclosed quote in the class list; close each quoted name, "
                               'e.g. ["tench, Tinca tinca",goldfish]')
            if opening <= 0:
                raise GktError(f"data spec {spec!r}: a class list needs a data set before it ({SYNTAX})")
            base, classes = base[:opening], parse_class_list(base[opening + 1:-1], spec)
        if domain is not None:
            DOMAINS.check(domain)
        return replace(cls._parse_base(base, spec), classes=classes, domain=domain)

    @classmethod
    def _parse_base(cls, base: str, spec: str) -> DataSpec:
        kind, _, path = base.partition(":")
        kind = "fmnist" if kind in FMNIST_NAMES else kind
        if kind not in DATA_SPEC_LOADERS:
            raise GktError(f"unknown data spec {spec!r}: {DATA_SPEC_LOADERS.unknown(kind)}; write it as {SYNTAX}")
        if kind == "folder" and not path:
            raise GktError(f"data spec {spec!r}: give the folder, folder:PATH (PATH/train/<class>/<images>)")
        return cls(kind, path or None)

    def with_classes(self, classes: str | None) -> DataSpec:
        """This spec restricted to ``classes`` (a class-list text such as ``"0-4"``; ``None``: unchanged)."""
        if not classes:
            return self
        if self.classes is not None:
            raise GktError(f"data spec {self}: it already names its classes; give the classes once "
                           f"(in the spec or as --classes {classes})")
        return replace(self, classes=parse_class_list(classes, str(self)))

    def __str__(self) -> str:
        base = self.kind if self.path is None else f"{self.kind}:{self.path}"
        classes = "" if self.classes is None else "[" + format_class_list(self.classes) + "]"
        return base + classes + ("" if self.domain is None else f"{DOMAIN_SEPARATOR}{self.domain}")


def check_data_dir(data_dir: str | None, specs: Iterable[str | DataSpec]) -> None:
    """Refuse a ``data_dir`` (``--data-dir``) that none of ``specs`` (a command's data) would read: it is
    where Fashion-MNIST is read from, so ``digits``, ``folder:PATH``, ``hf:...`` and ``fmnist:DIR`` ignore it."""
    if data_dir is None:
        return
    parsed = [DataSpec.parse(s) if isinstance(s, str) else s for s in specs]
    if any(s.kind in DATA_DIR_KINDS and s.path is None for s in parsed):
        return
    named = [str(s) for s in parsed if s.kind in DATA_DIR_KINDS]
    if named:
        raise GktError(f"--data-dir {data_dir} and the data spec {named[0]} both name the Fashion-MNIST directory; "
                       "give it once (--data fmnist --data-dir DIR, or --data fmnist:DIR)")
    data = ", ".join(dict.fromkeys(str(s) for s in parsed))
    raise GktError(f"--data-dir {data_dir} names the Fashion-MNIST directory, but this command's data ({data}) "
                   "does not read it: drop --data-dir (a data set's own location goes in its spec, e.g. folder:PATH)")


def load_split(spec: str | DataSpec, split: Split, *, data_dir: str | None = None, val_fraction: float = 0.1,
               seed: int = 0, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
               bad_images: BadImagePolicy | None = None) -> ImageDataset:
    """Load one split of a data spec: the base split, then its classes (relabelled in the order given),
    then its domain (same samples, transformed pixels). ``val`` is carved (stratified, seeded) from
    ``train`` unless the data set ships one; for Fashion-MNIST ``train`` then means the rest of the official
    train split. Encoded images (``folder:``, ``hf:``) are decoded at ``image_size`` with ``channels``
    (see :meth:`ImageDataset.at_decode_size`); ``bad_images`` (default ``$GKT_BAD_IMAGES``, else fail) says
    what an unreadable one does."""
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    dataset = DATA_SPEC_LOADERS[spec.kind](split, path=spec.path, data_dir=data_dir, val_fraction=val_fraction,
                                           seed=seed, image_size=image_size, channels=channels,
                                           bad_images=bad_images)
    if spec.classes is not None:
        dataset = class_subset(dataset, resolve_classes(spec.classes, dataset.class_names, f"data spec {spec}"))
    if not len(dataset):
        raise GktError(f"data spec {spec}: its {split} split has no images"
                       + (" of the classes selected" if spec.classes is not None else ""))
    if spec.domain is not None:
        dataset = apply_domain(dataset, spec.domain)
    return dataset


@DATA_SPEC_LOADERS.register("fmnist")
def _fmnist_split(split: Split, *, path: str | None, data_dir: str | None, val_fraction: float, seed: int,
                  **_: object) -> ImageDataset:
    """Fashion-MNIST from ``fmnist:DIR``, ``--data-dir`` or the default places; ``val`` carved from train."""
    if split == "test":
        return load_fashion_mnist("test", path or data_dir)
    full = load_fashion_mnist("train", path or data_dir)
    return carve_split(full, split, val_fraction, seed, "a val split needs --val-fraction > 0")


@DATA_SPEC_LOADERS.register("folder")
def _folder_split(split: Split, *, path: str, val_fraction: float, seed: int, image_size: int, channels: int,
                  bad_images: BadImagePolicy | None, **_: object) -> ImageDataset:
    """An ImageNet-layout folder: PATH/train/<class>/..., and PATH/val (or PATH/test) if it ships one."""
    root = Path(path)
    train_root = root / "train"
    if not train_root.is_dir():
        raise GktError(f"{root}: expected an ImageNet-layout folder with {train_root}/<class>/<images>")
    train = load_image_folder(train_root, image_size, channels, bad_images)
    shipped = {"val": root / "val", "test": root / "test"}
    for name in (split, "val") if split == "test" else (split,):
        if name in shipped and shipped[name].is_dir():
            return load_image_folder(shipped[name], image_size, channels, bad_images, train.class_names)
    if split == "test":
        raise GktError(f"{root}: no val/ or test/ folder to evaluate on")
    if split == "train" and shipped["val"].is_dir():  # a shipped val/ leaves train whole (nothing is carved)
        return train
    return carve_split(train, split, val_fraction, seed, f"{root}: no val/ folder; carve one with --val-fraction > 0")
