"""Decoding encoded images (files, dataset rows) to fixed-size ``uint8`` tensors, and what happens to
images that cannot be decoded.

Each image is decoded with ``torchvision.io`` (PIL for the formats it does not read) at its full size,
once; the data set then takes the views of its decode plan from it (:mod:`gkt.data.views`). An unreadable image is
found when it is decoded: it fails the command with its name, or, under ``--bad-images skip``, is left
out and counted (:func:`skipped_images`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from gkt.core.env import env, register_env
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home, read_json, write_json
from gkt.core.limits import MAX_IMAGE_PIXELS

# torchvision 0.29 marks its image codecs as deprecated in favour of TorchCodec (a separate install) and
# warns on every call; they remain the fast decoders this data path is built on.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

log = logging.getLogger(__name__)

BadImagePolicy = Literal["fail", "skip"]
BAD_IMAGE_POLICIES = ("fail", "skip")
# The process-wide policy a data spec loads with when none is given (set by the CLI's --bad-images, and
# inherited by the worker processes of a study).
BAD_IMAGES_ENV = "GKT_BAD_IMAGES"


class UnreadableImage(Exception):
    """An image that cannot be decoded; the message says why."""


def _policy(value: str) -> BadImagePolicy:
    if value not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad-image policy {value!r}: use one of {', '.join(BAD_IMAGE_POLICIES)}")
    return value  # type: ignore[return-value]


register_env(BAD_IMAGES_ENV, f"what --bad-images takes ({' or '.join(BAD_IMAGE_POLICIES)})", _policy)


def bad_image_policy(policy: str | None = None) -> BadImagePolicy:
    """``policy``, else ``$GKT_BAD_IMAGES``, else ``fail``."""
    if policy:
        try:
            return _policy(policy)
        except ValueError as exc:
            raise GktError(str(exc)) from None
    return env(BAD_IMAGES_ENV) or "fail"


@contextlib.contextmanager
def bad_images_default(policy: str | None) -> Iterator[None]:
    """Within the block, data specs load with ``policy`` unless told otherwise (and so do the worker
    processes a study starts); ``None`` leaves the default as it is."""
    if policy is None:
        yield
        return
    before = os.environ.get(BAD_IMAGES_ENV)
    os.environ[BAD_IMAGES_ENV] = bad_image_policy(policy)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BAD_IMAGES_ENV, None)
        else:
            os.environ[BAD_IMAGES_ENV] = before


def unreadable_message(source: str, reason: str) -> str:
    return (f"{source}: unreadable image ({reason}); fix or remove it, or pass --bad-images skip to leave "
            "unreadable images out")


# Images left out by this process under ``--bad-images skip``: source -> reason.
_SKIPPED: dict[str, str] = {}


def note_skipped(source: str, reason: str, quiet: bool = False) -> None:
    """Count an image left out under ``--bad-images skip`` (a warning the first time, unless ``quiet``:
    already reported elsewhere, e.g. by a worker process)."""
    if source not in _SKIPPED and not quiet:
        log.warning("skipping unreadable image %s (%s)", source, reason)
    _SKIPPED[source] = reason


def skipped_images() -> dict[str, str]:
    """The images this process has left out so far (source -> reason)."""
    return dict(_SKIPPED)


def reset_skipped() -> None:
    _SKIPPED.clear()


def _error_text(exc: BaseException) -> str:
    """The readable part of a torchvision/PIL error (torchvision prefixes its C++ source location)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.rsplit(".cpp:", 1)[-1].split(", ", 1)[-1] if ".cpp:" in text else text


def _decode_with_pil(encoded: torch.Tensor, channels: int, first_error: BaseException) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(encoded.numpy().tobytes())) as img:
            array = torch.from_numpy(np.array(img.convert("RGB" if channels == 3 else "L")))
    except UnidentifiedImageError as exc:  # its message names a BytesIO object: say what it means instead
        raise UnreadableImage("not an image format torchvision or PIL can read") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(_error_text(first_error if "Unsupported" not in str(first_error) else exc)) from exc
    return array[None] if array.ndim == 2 else array.permute(2, 0, 1).contiguous()


def check_image_header(encoded: torch.Tensor) -> bool:
    """Read an encoded image's dimensions from its header (nothing is decoded) and raise
    :class:`UnreadableImage` when it holds more than :data:`~gkt.core.limits.MAX_IMAGE_PIXELS` pixels: a few
    megabytes of compressed file can claim gigabytes of pixels (a decompression bomb). Returns whether it is
    animated (several frames: only the first is decoded, or thousands of frames would be)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(encoded.numpy().tobytes())) as img:
                width, height = img.size
                animated = bool(getattr(img, "is_animated", False))
    except Image.DecompressionBombError as exc:  # PIL's own refusal (over twice its limit)
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(claimed[1]):,}" if claimed else "too many"
        raise UnreadableImage(f"its header claims {pixels} pixels, more than the {MAX_IMAGE_PIXELS:,} gkt "
                              "decodes (a decompression bomb?)") from None
    except Exception:  # noqa: BLE001 — a header PIL cannot read: the decoders below say what is wrong
        return False
    if width * height > MAX_IMAGE_PIXELS:
        raise UnreadableImage(f"its header claims {width}×{height} = {width * height:,} pixels, more than "
                              f"the {MAX_IMAGE_PIXELS:,} gkt decodes (a decompression bomb?)")
    return animated


def decode_image(encoded: torch.Tensor, channels: int) -> torch.Tensor:
    """Encoded bytes (``uint8 [n]``) to the full-size image ``uint8 [channels, H, W]`` (an animated GIF: its
    first frame), its header checked first (:func:`check_image_header`). Raises :class:`UnreadableImage`."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    if check_image_header(encoded):  # torchvision would decode every frame: PIL decodes the first
        return _decode_with_pil(encoded, channels, RuntimeError("Unsupported: animated"))
    try:
        image = tv_decode(encoded, mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY)
    except RuntimeError as exc:  # a format torchvision does not read (BMP, TIFF, ...), or a broken file
        image = _decode_with_pil(encoded, channels, exc)
    if image.dtype != torch.uint8:  # a 16-bit PNG: converted to 8 bits as PIL (and so the libraries) do
        image = _decode_with_pil(encoded, channels, RuntimeError("16-bit image"))
    return image[0] if image.ndim == 4 else image


def read_encoded(path: str | os.PathLike) -> torch.Tensor:
    """A file's bytes as ``uint8 [n]``; raises :class:`UnreadableImage` when it cannot be read."""
    from torchvision.io import read_file

    try:
        return read_file(str(path))
    except (RuntimeError, OSError) as exc:
        raise UnreadableImage(_error_text(exc)) from exc


class ImageIndex:
    """What gkt has learnt about a set of encoded images (an image folder, a ``datasets`` table), kept between
    commands in ``$GKT_HOME/image-index`` under ``key``: unreadable items (by name and stamp, so a replaced or
    repaired file is tried again) and pixel statistics (keyed by the listing's content identity). Nothing in
    it is needed to read the images."""

    def __init__(self, key: str):
        self.key = key
        self.path = cache_home() / "image-index" / f"{stable_hash(key, 16)}.json"
        data: Any = {}
        if self.path.is_file():
            try:
                data = read_json(self.path)
            except (OSError, ValueError):
                data = {}  # a damaged index is rebuilt: it only holds what decoding finds again
        bad, stats = (data.get("bad"), data.get("stats")) if isinstance(data, dict) else (None, None)
        self.bad: dict[str, list] = {k: v for k, v in bad.items() if isinstance(v, list) and v} \
            if isinstance(bad, dict) else {}
        self.stats: dict[str, list] = {k: v for k, v in stats.items() if isinstance(v, list) and len(v) == 2} \
            if isinstance(stats, dict) else {}
        self._changed = False

    def known_bad(self, name: str, stamp: Sequence[int] = ()) -> str | None:
        """The recorded reason item ``name`` (with this stamp, e.g. :func:`~gkt.core.io.file_stamp`) is
        unreadable, if it is; a record for another stamp (the file was replaced or repaired since) is
        dropped at the next :meth:`save`."""
        entry = self.bad.get(name)
        if entry and tuple(entry[:-1]) == tuple(stamp):
            return str(entry[-1])
        if entry:
            del self.bad[name]
            self._changed = True
        return None

    def record_bad(self, name: str, stamp: Sequence[int], reason: str) -> None:
        self.bad[name] = [*stamp, reason]
        self._changed = True
        self.save()

    def record_stats(self, key: str, value: list) -> None:
        self.stats = {**dict(list(self.stats.items())[-15:]), key: value}  # the latest few listings
        self._changed = True
        self.save()

    def save(self) -> None:
        """Write what changed (atomically)."""
        if not self._changed:
            return
        self._changed = False
        try:
            write_json(self.path, {"key": self.key, "bad": self.bad, "stats": self.stats})
        except OSError:  # a read-only cache only costs the next command a decode
            pass


SHARED_MEMORY = "/dev/shm"  # where DataLoader workers hand decoded batches over (containers often give 64 MB)
_warned_shared_memory: set[tuple[int, int]] = set()


def check_shared_memory(workers: int, batch_bytes: int) -> None:
    """Warn (once per process and size) when ``workers`` decoding processes with batches of ``batch_bytes``
    may not fit in the shared memory they hand batches over in (two batches in flight per worker); should
    they run out, the command ends with one message saying so (:func:`gkt.core.errors.storage_error`)."""
    if not workers or (workers, batch_bytes) in _warned_shared_memory:
        return
    with contextlib.suppress(OSError):
        free, needed = shutil.disk_usage(SHARED_MEMORY).free, 2 * workers * batch_bytes
        if needed > free:
            _warned_shared_memory.add((workers, batch_bytes))
            log.warning("%d decoding workers may need %.0f MB of shared memory but %s has %.0f MB free; raise it "
                        "(docker run --shm-size=8g), or lower --batch-size", workers, needed / 2**20, SHARED_MEMORY,
                        free / 2**20)
