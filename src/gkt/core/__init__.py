"""Ground layer: the error type, atomic IO and the one CSV writer, content hashing, runtime settings and
shared config dataclasses. Imports nothing else from gkt."""
