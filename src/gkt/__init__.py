"""gkt — general knowledge transfer between any pretrained classifiers."""

__version__ = "0.1.0"

# The Python API, imported on first use (importing torch takes seconds): ``gkt.improve(student=..., zoo=[...])``.
_API = {"improve": "gkt.experiments.improve", "mutual": "gkt.experiments.mutual"}
__all__ = ["__version__", "main", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'gkt' has no attribute {name!r}")


def main() -> int:
    """The ``gkt`` console script: :func:`gkt.cli.main`, with Ctrl-C during start-up (importing torch takes
    seconds) ending as any interruption does, without a traceback."""
    import sys

    try:
        from gkt.cli import main as cli_main
    except KeyboardInterrupt:
        print("gkt: interrupted", file=sys.stderr)
        return 130
    return cli_main()
