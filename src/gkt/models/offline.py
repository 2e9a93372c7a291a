"""Offline mode: ``GKT_OFFLINE=1`` (or huggingface_hub's own ``HF_HUB_OFFLINE=1``) means that no model
source goes to the network. torchvision weights must then be in the torch hub cache (a missing file is one
error at once, naming the file, instead of a wait for a DNS failure), and ``hf:`` and ``timm:`` weights in
the Hugging Face cache (huggingface_hub reads its cache only, as under ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from gkt.core.env import env, register_env

OFFLINE_ENV = "GKT_OFFLINE"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_flag(text: str) -> bool:
    value = text.strip().lower()
    if value not in TRUE + FALSE:
        raise ValueError(f"{text!r} is not a yes/no value")
    return value in TRUE


register_env(OFFLINE_ENV, f"{' or '.join(TRUE[:2])} (download nothing) or {' or '.join(FALSE[:2])}", parse_flag)


def offline_reason() -> str | None:
    """The variable that forbids downloads (``$GKT_OFFLINE=1``, or ``$HF_HUB_OFFLINE=1`` / its older name
    ``$TRANSFORMERS_OFFLINE``, read as huggingface_hub reads them); None when none does."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    if env(OFFLINE_ENV, False):
        return f"${OFFLINE_ENV}={os.environ[OFFLINE_ENV]}"
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in ENV_VARS_TRUE_VALUES:
            return f"${name}={os.environ[name]}"
    return None


@contextlib.contextmanager
def hub_cache_only() -> Iterator[None]:
    """Under ``GKT_OFFLINE=1``, huggingface_hub (``hf:`` and ``timm:`` weights) reads its cache only for the
    block, as under its own ``HF_HUB_OFFLINE=1``."""
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = previous or bool(env(OFFLINE_ENV, False))
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous
