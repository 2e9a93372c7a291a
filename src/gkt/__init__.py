"""gkt — general knowledge transfer between any pretrained classifiers.

The Python API: each verb's call takes the CLI's options as keyword arguments (dashes as underscores) and
writes the same run directory, so both give the same numbers: :func:`gkt.improve`, :func:`gkt.mutual`,
:func:`gkt.analyze`, ``gkt.transfer(...)``, :func:`gkt.study`, :func:`gkt.export`; and the CLI's model and
data loading: :func:`gkt.load_model`, :func:`gkt.load_data`. Imported on first use (importing torch takes
seconds)."""

__version__ = "0.1.0"

# name -> module holding it; ``gkt.transfer`` is the package of transfer methods, itself callable
_API = {"load_model": "gkt.experiments.inputs", "load_data": "gkt.experiments.inputs",
        "improve": "gkt.experiments.improve", "mutual": "gkt.experiments.mutual", "analyze": "gkt.experiments.analyze",
        "transfer": "gkt.transfer", "study": "gkt.experiments.study", "export": "gkt.experiments.export"}
__all__ = ["__version__", "main", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        module = importlib.import_module(_API[name])
        return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    raise AttributeError(f"module 'gkt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


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
