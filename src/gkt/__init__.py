"""gkt — general knowledge transfer between any pretrained classifiers."""

__version__ = "0.1.0"


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
