"""Fashion-MNIST: IDX parsing, location (local, Debian, cache), verified download."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gkt.core.env import env, register_env
from gkt.core.errors import GktError
from gkt.core.io import atomic_path, cache_home, file_stamp
from gkt.core.limits import check_path
from gkt.data.datasets import TensorImageDataset

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


APT_HINT = "sudo apt-get install dataset-fashion-mnist"


@dataclass(frozen=True)
class IdxFile:
    """An official Fashion-MNIST file; the checksum is over the *decompressed* IDX payload,
    so re-compressed copies (as Debian ships them) verify too."""

    name: str
    sha256: str
    shape: tuple[int, ...]


FASHION_MNIST_FILES = {
    ("train", "images"): IdxFile("train-images-idx3-ubyte.gz",
                                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                 (60000, 28, 28)),
    ("train", "labels"): IdxFile("train-labels-idx1-ubyte.gz",
                                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
    ("test", "images"): IdxFile("t10k-images-idx3-ubyte.gz",
                                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                                (10000, 28, 28)),
    ("test", "labels"): IdxFile("t10k-labels-idx1-ubyte.gz",
                                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,)),
}


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_payload(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise GktError(f"{path}: cannot read ({exc}); the file is corrupt or truncated — delete it and "
                       f"reinstall/re-download it") from exc


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX byte string (magic ``00 00 <dtype> <ndim>``, big-endian dims, data)."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise GktError(f"{source}: not an IDX file (bad magic number)")
    dtype_code, ndim = payload[2], payload[3]
    if dtype_code not in _IDX_DTYPES or ndim == 0:
        raise GktError(f"{source}: unsupported IDX type 0x{dtype_code:02x} with {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise GktError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(payload) - header != expected:
        raise GktError(f"{source}: IDX data has {len(payload) - header} bytes but shape {shape} needs "
                       f"{expected}; the file is truncated or corrupt")
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped); verify the decompressed payload's SHA-256 if given."""
    path = Path(path)
    if not path.is_file():
        raise GktError(f"{path}: file not found")
    payload = _read_payload(path)
    if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
        raise GktError(f"{path}: checksum mismatch (expected SHA-256 {sha256[:12]}… of the decompressed file); "
                       "the file is corrupt or not the official one")
    return parse_idx(payload, str(path))


VERIFIED_FILES = "verified-files.json"  # in the cache home: {path: [*file stamp, sha256]} of checked files


def _verified(path: Path) -> tuple[Path, list, dict]:
    """``(memo file, this file's stamp (:func:`~gkt.core.io.file_stamp`), the memo)``."""
    memo_path = cache_home() / VERIFIED_FILES
    try:
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    except (OSError, ValueError):
        memo = {}
    return memo_path, list(file_stamp(path.stat())), memo if isinstance(memo, dict) else {}


def check_official(path: Path, payload: bytes, images: np.ndarray, spec: IdxFile) -> None:
    """A file with the official shape must be the official file: its SHA-256 is checked once per path
    and file stamp, and the check is remembered in the cache home. Files of another shape
    (e.g. a small subset with the official names) are used as given, with a warning."""
    if images.shape != spec.shape:
        log.warning("%s holds %s, not the official Fashion-MNIST %s: used as given, unverified", path,
                    images.shape, spec.shape)
        return
    memo_path, stamp, memo = _verified(path)
    key = str(path.resolve())
    if memo.get(key) == [*stamp, spec.sha256]:
        return
    if hashlib.sha256(payload).hexdigest() != spec.sha256:
        raise GktError(f"{path}: it has the shape of the official Fashion-MNIST {spec.name} but not its content "
                       f"(SHA-256 of the decompressed file is not {spec.sha256[:12]}…); the file is corrupt or was "
                       "changed: reinstall it (`" + APT_HINT + "`) or delete it to re-download")
    memo[key] = [*stamp, spec.sha256]
    try:
        with atomic_path(memo_path) as tmp:
            tmp.write_text(json.dumps(memo, indent=1))
    except OSError as exc:  # a read-only cache: the file is checked again next time
        log.debug("cannot remember the check of %s (%s)", path, exc)


def _fashion_mnist_dir(text: str | os.PathLike) -> Path:
    """A directory a user named (``--data-dir``, ``$GKT_DATA``) checked to hold the four files; a ValueError
    says what is wrong."""
    check_path(text, "the Fashion-MNIST directory")
    if not Path(text).is_dir():
        raise ValueError("no such directory (give the directory holding the four Fashion-MNIST IDX .gz "
                         "files)")
    missing = [f.name for f in FASHION_MNIST_FILES.values() if not (Path(text) / f.name).is_file()]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    return Path(text)


register_env("GKT_DATA", "what --data-dir takes (the directory of the Fashion-MNIST files)",
             _fashion_mnist_dir)


def _fashion_mnist_dir_candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    candidates = []
    if data_dir:
        candidates.append(Path(data_dir))
    candidates += [DEBIAN_FASHION_MNIST_DIR, cache_home() / "data" / "fashion-mnist"]
    return candidates


def _has_all_files(directory: Path) -> bool:
    return all((directory / f.name).is_file() for f in FASHION_MNIST_FILES.values())


def download_fashion_mnist(target: Path, base_url: str = FASHION_MNIST_URL, timeout: float = 30) -> Path:
    """Download the official files into ``target``, verifying each checksum before it is kept."""
    target.mkdir(parents=True, exist_ok=True)
    for spec in FASHION_MNIST_FILES.values():
        final = target / spec.name
        if final.is_file():
            continue
        tmp = target / (spec.name + ".part")
        with urllib.request.urlopen(base_url + spec.name, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        try:
            payload = gzip.decompress(tmp.read_bytes())
        except (OSError, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise GktError(f"downloaded {spec.name} is not a valid gzip file ({exc})") from exc
        if hashlib.sha256(payload).hexdigest() != spec.sha256:
            tmp.unlink(missing_ok=True)
            raise GktError(f"downloaded {spec.name} failed its SHA-256 check")
        os.replace(tmp, final)
    return target


def locate_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the Fashion-MNIST directory: ``data_dir``, ``$GKT_DATA``, the Debian package, the cache;
    else download into the cache when the network allows; else a clear error."""
    if data_dir:  # a directory the user named is used or refused, never silently replaced by another copy
        if not Path(data_dir).is_dir():
            raise GktError(f"--data-dir {data_dir}: no such directory (give the directory holding the four "
                           "Fashion-MNIST IDX .gz files, or leave --data-dir out to use the installed copy)")
        missing = [f.name for f in FASHION_MNIST_FILES.values() if not (Path(data_dir) / f.name).is_file()]
        if missing:
            raise GktError(f"--data-dir {data_dir} lacks {', '.join(missing)}")
        return Path(data_dir)
    named = env("GKT_DATA")  # so is $GKT_DATA (checked as --data-dir is)
    if named is not None:
        return named
    candidates = _fashion_mnist_dir_candidates(data_dir)
    for directory in candidates:
        if _has_all_files(directory):
            return directory
    if download:
        try:
            return download_fashion_mnist(candidates[-1])
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = f"download failed: {exc}"
        except GktError as exc:
            reason = f"download failed verification: {exc}"
    else:
        reason = "download disabled"
    searched = ", ".join(str(c) for c in candidates)
    raise GktError(f"Fashion-MNIST not found (searched {searched}; {reason}). Install it with "
                   f"`{APT_HINT}`, or pass --data-dir DIR / set GKT_DATA to a directory holding the four "
                   "official IDX .gz files.")


def load_fashion_mnist(split: Literal["train", "test"], data_dir: str | os.PathLike | None = None,
                       download: bool = True) -> TensorImageDataset:
    """The official train (60k) or test (10k) split as a :class:`TensorImageDataset`."""
    if split not in ("train", "test"):
        raise GktError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    directory = locate_fashion_mnist(data_dir, download=download)
    arrays = []
    for kind in ("images", "labels"):
        spec = FASHION_MNIST_FILES[(split, kind)]
        payload = _read_payload(directory / spec.name)
        arrays.append(parse_idx(payload, str(directory / spec.name)))
        check_official(directory / spec.name, payload, arrays[-1], spec)
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1:
        raise GktError(f"{directory}: expected images [N, H, W] and labels [N], got {images.shape} and "
                       f"{labels.shape}")
    if len(images) != len(labels):
        raise GktError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise GktError(f"{directory}: label {int(labels.max())} out of range for the 10 Fashion-MNIST classes")
    return TensorImageDataset(f"fmnist:{split}", torch.from_numpy(images.copy())[:, None],
                              torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)
