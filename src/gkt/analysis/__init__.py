"""Complementary-knowledge analysis (Roth et al., ICLR 2024, §3): positive/negative flips per pair and class,
from one forward pass per model."""
