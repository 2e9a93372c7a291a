"""gkt checkpoints: weights in safetensors plus a JSON sidecar (architecture, preprocessing, labels,
provenance). Nothing is ever unpickled."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gkt.core.errors import GktError
from gkt.core.hashing import tensor_hash
from gkt.core.io import atomic_path, parse_json, write_json
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.preprocess import Preprocess

FORMAT = "gkt-checkpoint/1"


log = logging.getLogger(__name__)

def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights.safetensors, sidecar.json)`` for a path given with or without a suffix, or a directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def state_dict_for_saving(model: Classifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.net.state_dict().items()}


def weights_hash(model: Classifier) -> str:
    return tensor_hash(model.net.state_dict())


def save_checkpoint(model: Classifier, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write ``path.safetensors`` + ``path.json`` atomically, the sidecar last (a checkpoint exists once its
    sidecar does: weights left without one by a killed save are replaced); refuses to overwrite unless asked."""
    weights_path, sidecar_path = checkpoint_paths(path)
    if not overwrite and sidecar_path.exists():
        raise GktError(f"{weights_path} exists; gkt never overwrites a model (choose another output path)")
    tensors = state_dict_for_saving(model)
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(sidecar_path, {
        "format": FORMAT,
        "name": model.name,
        "arch": model.arch.to_dict(),
        "preprocess": model.preprocess.to_dict(),
        "class_names": model.class_names,
        "weights_sha256": tensor_hash(tensors),
        "provenance": model.provenance,
        **(extra or {}),
    })
    return weights_path


SIDECAR_KEYS = ("arch", "preprocess", "class_names", "weights_sha256")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's sidecar, checked to be a gkt sidecar with every field a model needs."""
    _, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        raise GktError(f"{sidecar_path}: checkpoint sidecar not found (a gkt checkpoint is NAME.safetensors "
                       "+ NAME.json)")
    try:
        meta = parse_json(sidecar_path.read_text())
    except (ValueError, OSError) as exc:  # bad JSON, or bytes that are not even text
        raise GktError(f"{sidecar_path}: not valid JSON ({exc}); the checkpoint is damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
        raise GktError(f"{sidecar_path}: not a gkt checkpoint sidecar (format {found!r}, expected {FORMAT!r})")
    missing = [key for key in SIDECAR_KEYS if key not in meta]
    if missing:
        raise GktError(f"{sidecar_path}: the sidecar lacks {', '.join(missing)}; the checkpoint is damaged "
                       "(save it again with gkt)")
    return meta


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or a ``.pt``/``.pth`` file loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise GktError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused what is not plain tensors
        raise GktError(f"{path}: cannot read weights: the file holds Python objects besides tensors (a pickle), "
                       "which gkt never loads; convert it to a plain state dict or safetensors") from exc
    except Exception as exc:  # corrupt files raise library-specific errors
        raise GktError(f"{path}: cannot read weights ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                       "; the file is damaged or not a weights file") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GktError(f"{path}: expected a state dict of tensors")
    return state


def load_checkpoint(path: str | os.PathLike, net: nn.Module | None = None) -> Classifier:
    """The model of a gkt checkpoint; its weights must hash to the sidecar's ``weights_sha256``. ``net``: the
    network to load the weights into instead of one built from the sidecar (a user's own module:
    :func:`gkt.models.own.load_module_checkpoint`)."""
    weights_path, sidecar_path = checkpoint_paths(path)
    meta = read_sidecar(path)
    try:
        arch = ArchSpec.from_dict(meta["arch"])
        net = arch.build() if net is None else net
        model = Classifier(net, arch, Preprocess.from_dict(meta["preprocess"]), meta["class_names"],
                           provenance=meta.get("provenance"), name=meta.get("name"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GktError(f"{sidecar_path}: the sidecar describes no valid model ({type(exc).__name__}: {exc})") from exc
    tensors = load_weights(weights_path)
    recorded = str(meta["weights_sha256"])
    if len(recorded) < 16:
        raise GktError(f"{sidecar_path}: its weights_sha256 {recorded!r} is no SHA-256 prefix of 16 or more hex "
                       "digits, so the weights cannot be verified; restore or rebuild the checkpoint")
    if tensor_hash(tensors, len(recorded)) != recorded:
        raise GktError(f"{weights_path}: the weights do not match the SHA-256 recorded in {sidecar_path.name} "
                       "(the file is corrupt or was changed); restore or rebuild the checkpoint")
    try:
        model.net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise GktError(f"{weights_path}: weights do not fit the architecture in its sidecar ({exc})") from exc
    return model


def load_cached(path: str | os.PathLike, record: str) -> Classifier | None:
    """A checkpoint gkt keeps as a cache (adapted heads, domain fine-tunes) whose provenance holds ``record``:
    the model, or ``None`` when there is none, or a damaged one (removed, with a warning: it is made again)."""
    weights, sidecar = checkpoint_paths(path)
    if not sidecar.is_file():
        return None
    try:
        model = load_checkpoint(path)
        model.provenance[record]  # noqa: B018 — a checkpoint without its record is no cache entry
        return model
    except (GktError, KeyError, TypeError) as exc:
        log.warning("%s: a cached model is damaged (%s): it is made again", sidecar, exc)
        weights.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return None
