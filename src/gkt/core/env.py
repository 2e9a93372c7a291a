"""gkt's environment variables (``GKT_*``), each parsed by the same rules as the flag it stands in for: a
module that reads one registers its parser here (:func:`register_env`), every read goes through
:func:`env`, and the CLI checks them all before anything else (:func:`check_environment`), so a bad value is
one error naming the variable instead of a traceback or a silent fallback. A variable set to the empty
string counts as unset (``GKT_HOME=`` does not mean the current directory)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gkt.core.errors import GktError


@dataclass(frozen=True)
class EnvVar:
    name: str
    takes: str  # what it takes, e.g. "what --bad-images takes (fail or skip)", named in its errors
    parse: Callable[[str], Any]  # the text to its value; raises ValueError (or GktError) saying what is wrong


ENV_VARS: dict[str, EnvVar] = {}


def register_env(name: str, takes: str, parse: Callable[[str], Any]) -> None:
    ENV_VARS[name] = EnvVar(name, takes, parse)


def env_text(name: str) -> str | None:
    """The raw value of ``name``; None when unset or empty."""
    value = os.environ.get(name)
    return value if value and value.strip() else None


def env(name: str, default: Any = None) -> Any:
    """``$name`` parsed by its registered rule (``default`` when unset or empty); a bad value is a
    :class:`GktError` naming the variable and what it takes."""
    text = env_text(name)
    if text is None:
        return default
    var = ENV_VARS[name]
    try:
        return var.parse(text)
    except (GktError, ValueError, TypeError) as exc:
        raise GktError(f"${name}={_shown(text)}: {exc}; it takes {var.takes}: fix it, or unset it") from None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 120 else f"{text[:60]}…{text[-40:]}")


# GKT_* variables that are not gkt's settings (the ./run script's own).
NOT_SETTINGS = frozenset({"GKT_UV_VENV"})


def unknown_variables() -> list[str]:
    """``GKT_*`` variables set in the environment that gkt does not read (a typo, or an old name)."""
    return sorted(k for k, v in os.environ.items()
                  if k.startswith("GKT_") and k not in ENV_VARS and k not in NOT_SETTINGS and v)


def check_environment() -> None:
    """Parse every registered ``GKT_*`` variable that is set (the first bad one is a :class:`GktError`)."""
    for name in ENV_VARS:
        env(name)
