"""The one registry helper: named entries of one kind (transfer methods, domains, trackers, verbs, ...).

Entries register with a decorator, ``@METHODS.register("kl")``; a name is registered once (a second
registration is refused rather than silently replacing the first). Looking up an unknown name raises
:class:`UnknownName`, a :class:`GktError` naming the closest registered names and all of them, so every
"unknown X" message of the command line reads the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

from gkt.core.errors import GktError

T = TypeVar("T")


class UnknownName(GktError, KeyError):
    """A name that is not registered (a ``KeyError`` too, so ``in``/``get`` and mapping code work)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(MutableMapping[str, T], Generic[T]):
    """Named entries of one ``kind`` (e.g. ``"transfer method"``), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object as ``name`` and return it unchanged."""

        def decorate(entry: T) -> T:
            self[name] = entry
            return entry

        return decorate

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def unknown(self, name: object) -> str:
        """The error message for an unregistered ``name``: the closest names, then all of them."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names()) or 'none'}"

    def check(self, names: str | list[str] | tuple[str, ...]) -> None:
        """Raise :class:`UnknownName` for the first of ``names`` that is not registered."""
        for name in [names] if isinstance(names, str) else names:
            if name not in self._entries:
                raise UnknownName(self.unknown(name))

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.unknown(name)) from None

    def __setitem__(self, name: str, entry: T) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); "
                             "choose another name")
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
