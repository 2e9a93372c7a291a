"""Reporting: records in, CSV/Markdown/PNG/HTML out. Never loads models."""
