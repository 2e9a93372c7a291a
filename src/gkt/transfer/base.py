"""The transfer-method contract and its registry.

A method is a small ``nn.Module``: it declares what it needs per step (teacher logits, frozen-student
logits, features, labels), turns one :class:`Step` into a dict of named losses (summed by the trainer),
and may own trainable parts (CRD's projections) or state (MCL's slow weights). The shared trainer
(:mod:`gkt.transfer.trainer`) computes only what a method declares; a method that does not declare
``labels`` is never given them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gkt.core.errors import GktError
from gkt.core.registry import Registry
from gkt.models.classifier import Classifier

# What a method can ask the trainer for.
TEACHER_LOGITS = "teacher_logits"
TEACHER_FEATURES = "teacher_features"
TEACHERS_LOGITS = "teachers_logits"  # [B, K, C]: every teacher's logits, stacked (K-teacher methods)
FROZEN_LOGITS = "frozen_logits"  # the frozen copy of the student before transfer ("student-teacher")
STUDENT_FEATURES = "student_features"
LABELS = "labels"
NEEDS = frozenset({TEACHER_LOGITS, TEACHER_FEATURES, TEACHERS_LOGITS, FROZEN_LOGITS, STUDENT_FEATURES, LABELS})
# What :meth:`TransferMethod.prepare_targets` may derive from the frozen outputs: the soft targets' log-
# probabilities at temperature T, [B, C] = log σ(z/T).
TARGET_LOG_PROBS = "target_log_probs"


@dataclass
class Step:
    """What a method sees in one optimisation step (all tensors on the training device)."""

    student_logits: torch.Tensor  # [B, C], requires grad
    targets: dict[str, torch.Tensor]  # frozen models' outputs, keyed by the needs above (no grad)
    indices: torch.Tensor  # [B] positions in the transfer set (CPU)
    generator: torch.Generator  # the trainer's seeded CPU generator
    labels: torch.Tensor | None = None  # only for methods that declare LABELS
    student_features: torch.Tensor | None = None  # only for methods that declare STUDENT_FEATURES


class TransferMethod(nn.Module):
    """Base class: subclasses set ``needs`` and implement :meth:`forward` (a dict of losses)."""

    name: ClassVar[str] = ""
    needs: frozenset[str] = frozenset({TEACHER_LOGITS})  # an instance may narrow/extend it in __init__

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise GktError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @property
    def uses_labels(self) -> bool:
        return LABELS in self.needs

    def setup(self, student: Classifier, teacher: Classifier, num_samples: int, example: torch.Tensor) -> None:
        """Build parts that depend on the models or the transfer set (called once, before the optimiser)."""

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-sample tensors the loss reads, derived row by row from the frozen models' outputs (and the
        labels, for methods that declare them). When the outputs are fixed (cached, no augmentation) the
        trainer calls this once for the whole transfer set and reads rows per step; otherwise per batch.
        Default: the outputs themselves."""
        return targets

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, student: Classifier, step_index: int) -> None:
        """Called after every optimiser step (``step_index`` counts from 0)."""

    def result(self, student: Classifier) -> Classifier:
        """The model that is evaluated and saved (the student itself unless the method keeps another)."""
        return student

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments as given (for configs and reports)."""
        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}


class PartitionMethod(TransferMethod):
    """A method that assigns each sample to the teacher or to the frozen student (data partitioning)."""

    def teacher_mask(self, teacher_logits: torch.Tensor, frozen_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        """``bool [B]``: True where the sample is distilled from the teacher."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- shared loss pieces


def kl_per_sample(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL[σ(z_t/T) ‖ σ(z_s/T)]`` per sample, ``[B]``."""
    return F.kl_div(F.log_softmax(student_logits / temperature, -1), F.log_softmax(target_logits / temperature, -1),
                    reduction="none", log_target=True).sum(-1)


def kl_loss(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1: ``T² · mean_i KL[σ(z_t,i/T) ‖ σ(z_s,i/T)]``."""
    return temperature ** 2 * kl_per_sample(student_logits, target_logits, temperature).mean()


def soft_targets(target_logits: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """The fixed part of eq. 1 for targets ``z_t``, computed once per sample: ``log σ(z_t/T)``."""
    return {TARGET_LOG_PROBS: F.log_softmax(target_logits.float() / temperature, -1)}


def kl_loss_soft(student_logits: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Eq. 1 from :func:`soft_targets` (the same value as :func:`kl_loss`): ``T² · mean_i KL[p_i ‖ σ(z_s,i/T)]``
    with the targets' log-probabilities ``log p`` prepared once; per step only the student's log-softmax
    and one fused KL (forward and backward)."""
    logits = student_logits.float() if temperature == 1 else student_logits.float() / temperature
    kl = F.kl_div(F.log_softmax(logits, -1), targets[TARGET_LOG_PROBS], reduction="batchmean", log_target=True)
    return kl if temperature == 1 else kl * temperature ** 2


# ----------------------------------------------------------------------------- registry

METHODS: Registry[type[TransferMethod]] = Registry("transfer method")


def register_method(name: str) -> Callable[[type[TransferMethod]], type[TransferMethod]]:
    """Register a method class as ``name`` after checking that it declares only known needs."""

    def decorate(cls: type[TransferMethod]) -> type[TransferMethod]:
        unknown = cls.needs - NEEDS
        if unknown:
            raise ValueError(f"{cls.__name__} needs unknown inputs {sorted(unknown)}")
        METHODS[name] = cls
        cls.name = name
        return cls

    return decorate


def method_arguments(cls: type[TransferMethod]) -> dict[str, Any]:
    """``{argument: default}`` of a method's constructor (``temperature`` included)."""
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def _coerce(value: Any, default: Any, method: str, key: str) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        return type(default)(value) if default is not None else float(value)
    except ValueError:
        raise GktError(f"method {method}: {key}={value!r} is not a valid {type(default).__name__}") from None


def create_method(name: str, args: dict[str, Any] | None = None) -> TransferMethod:
    """Instantiate a registered method; string values (``--method-arg k=v``) are cast to the default's type."""
    cls = METHODS[name]
    accepted = method_arguments(cls)
    args = dict(args or {})
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        listed = ", ".join(f"{k}={v}" for k, v in accepted.items())
        raise GktError(f"method {name} has no argument(s) {unknown}; it accepts: {listed}")
    return cls(**{k: _coerce(v, accepted[k], name, k) for k, v in args.items()})


def label_free_methods() -> list[str]:
    """The registered methods whose class does not declare :data:`LABELS` (usable on unlabelled data)."""
    return [name for name in METHODS.names() if LABELS not in METHODS[name].needs]


def describe_methods() -> str:
    """One line per method: name, first docstring line, arguments with defaults."""
    lines = []
    for name in METHODS.names():
        cls = METHODS[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        args = " ".join(f"{k}={v}" for k, v in method_arguments(cls).items())
        lines.append(f"  {name:12s} {doc} [{args}]")
    return "\n".join(lines)
