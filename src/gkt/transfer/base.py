"""The transfer-method contract and its registry.

A method is a small ``nn.Module``: it declares what it needs per step (teacher logits, frozen-student
logits, features, labels), turns one :class:`Step` into a dict of named losses (summed by the trainer),
and may own trainable parts (CRD's projections) or state (MCL's slow weights). The shared trainer
(:mod:`gkt.transfer.trainer`) computes only what a method declares; a method that does not declare
``labels`` is never given them.

Frozen models' outputs are logits ``[B, C]``, or — read from the output cache for a large label space —
:class:`~gkt.engine.sparse_targets.SparseTargets` (sampled, unbiased soft targets with the exact top-1,
maximum and true-class probabilities). The helpers below (:func:`soft_targets`, :func:`kl_loss_soft`,
:func:`confidence`, :func:`select_targets`, :func:`predicted_class`) take either, so a method written with
them handles both.
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
from gkt.engine.sparse_targets import SparseTargets
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
# ... or, from sampled sparse targets, the target's classes and probabilities at T, [B, S] each.
TARGET_INDICES, TARGET_PROBS = "target_indices", "target_probs"
Targets = torch.Tensor | SparseTargets  # a frozen model's outputs: logits, or sampled sparse targets


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


def soft_targets(targets: Targets, temperature: float) -> dict[str, torch.Tensor]:
    """The fixed part of eq. 1 for targets ``z_t``, computed once per sample: ``log σ(z_t/T)``; for sampled
    sparse targets (drawn at T) their classes and probabilities."""
    if isinstance(targets, SparseTargets):
        if targets.temperature != temperature:
            raise GktError(f"the cached sparse targets were drawn at temperature {targets.temperature:g}, the loss "
                           f"uses {temperature:g}; cache them at the loss's temperature")
        indices, probs = targets.target()
        return {TARGET_INDICES: indices, TARGET_PROBS: probs}
    return {TARGET_LOG_PROBS: F.log_softmax(targets.float() / temperature, -1)}


def _sparse_kl(student_logits: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """``KL[q ‖ σ(z_s/T)]`` per sample for a sparse target q (classes ``TARGET_INDICES``, probabilities
    ``TARGET_PROBS``): ``Σ_j q_j (log q_j − log σ(z_s/T)_{c_j})``; its gradient is ``(σ(z_s/T) − q)/T``."""
    log_s = F.log_softmax(student_logits.float() / temperature, -1).gather(-1, targets[TARGET_INDICES])
    q = targets[TARGET_PROBS]
    return (torch.special.xlogy(q, q) - q * log_s).sum(-1)


def kl_per_sample_soft(student_logits: torch.Tensor, targets: dict[str, torch.Tensor],
                       temperature: float) -> torch.Tensor:
    """``KL[p_i ‖ σ(z_s,i/T)]`` per sample, ``[B]``, from :func:`soft_targets` (dense or sparse)."""
    if TARGET_LOG_PROBS not in targets:
        return _sparse_kl(student_logits, targets, temperature)
    return F.kl_div(F.log_softmax(student_logits.float() / temperature, -1), targets[TARGET_LOG_PROBS],
                    reduction="none", log_target=True).sum(-1)


def kl_loss_soft(student_logits: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Eq. 1 from :func:`soft_targets` (the same value as :func:`kl_loss`): ``T² · mean_i KL[p_i ‖ σ(z_s,i/T)]``
    with the targets' log-probabilities ``log p`` prepared once; per step only the student's log-softmax
    and one fused KL (forward and backward). Sparse targets: the KL over their classes."""
    if TARGET_LOG_PROBS not in targets:
        return temperature ** 2 * _sparse_kl(student_logits, targets, temperature).mean()
    logits = student_logits.float() if temperature == 1 else student_logits.float() / temperature
    kl = F.kl_div(F.log_softmax(logits, -1), targets[TARGET_LOG_PROBS], reduction="batchmean", log_target=True)
    return kl if temperature == 1 else kl * temperature ** 2


def confidence(targets: Targets, labels: torch.Tensor | None) -> torch.Tensor:
    """Eq. 4 (T = 1): the true class's probability with ``labels``, else the maximum probability; exact for
    sparse targets too (stored). ``[...]`` for targets ``[..., C]`` (``labels [B]`` for ``[B, M, C]``)."""
    if isinstance(targets, SparseTargets):
        if labels is None:
            return targets.max_prob
        if targets.true_prob is None:
            raise GktError("the cached sparse targets hold no true-class probabilities (labels were not allowed)")
        return targets.true_prob
    probs = F.softmax(targets.float(), -1)
    if labels is None:
        return probs.amax(-1)
    index = labels.view(-1, *[1] * (targets.dim() - 1)).expand(*targets.shape[:-1], 1)
    return probs.gather(-1, index).squeeze(-1)


def predicted_class(targets: Targets) -> torch.Tensor:
    """The argmax class (exact for sparse targets)."""
    return targets.argmax(-1)


def select_targets(mask: torch.Tensor, a: Targets, b: Targets) -> Targets:
    """Row-wise ``a`` where ``mask [B]``, else ``b`` (both logits or both sparse targets)."""
    if isinstance(a, SparseTargets) != isinstance(b, SparseTargets):
        raise GktError("cannot mix cached sparse targets with logits; cache both models' outputs or neither")
    if isinstance(a, SparseTargets):
        return SparseTargets.where(mask, a, b)
    return torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)


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
