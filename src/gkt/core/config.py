"""Configuration dataclasses shared across layers."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    """A complete supervised training recipe; the learning rate follows warm-up + cosine to zero."""

    epochs: int
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    batch_size: int = 128
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ()
    warmup_epochs: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(**{**d, "augment": tuple(d.get("augment", ()))})

    def describe(self) -> str:
        aug = "+".join(self.augment) or "none"
        ls = f" ls={self.label_smoothing}" if self.label_smoothing else ""
        return f"{self.optimizer} lr={self.lr} wd={self.weight_decay} {self.epochs}ep aug={aug}{ls} seed={self.seed}"


# job settings a study grid may vary; study tables group runs by them
GRID_KEYS = ("lr", "epochs", "temperature", "batch_size", "student_mode", "recipe")  # job settings a study grid may vary
