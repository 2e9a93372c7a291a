"""The project's error type: what went wrong and how to fix it."""

from __future__ import annotations


class GktError(Exception):
    """An error caused by user input (bad spec, bad data, missing file): printed without a traceback."""
