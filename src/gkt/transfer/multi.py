"""Multi-teacher transfer (paper §4.3, §5.2, Tables 4 and 9, Fig. 11): the building blocks of sequential,
parallel and soup transfer on top of the single-teacher trainer — teacher orders, the K-teacher form of a
method, the weight soup, the teacher-set checks. The study that runs them (each transfer a grid job in a
results store) is :mod:`gkt.experiments.multi_teacher`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.registry import Registry
from gkt.models.checkpoint import weights_hash
from gkt.models.classifier import Classifier, check_label_space
from gkt.transfer.base import METHODS, TEACHERS_LOGITS


# Teacher orders for sequential transfer, from the teachers' test accuracies to positions.
ORDERS: Registry[Callable[[Sequence[float]], list[int]]] = Registry("teacher order")
ORDERS.update({"given": lambda accs: list(range(len(accs))),
               "asc": lambda accs: sorted(range(len(accs)), key=lambda i: accs[i]),
               "desc": lambda accs: sorted(range(len(accs)), key=lambda i: -accs[i])})


# Single-teacher methods and their K-teacher form for parallel transfer.
PARALLEL_FORMS = {"kl-dp": "kl-dp-multi", "kl-dp-unsup": "kl-dp-multi-unsup"}


def parallel_method(method: str) -> str:
    """The K-teacher method parallel transfer runs for ``method`` (a method that takes stacked teachers as is)."""
    if method in METHODS and TEACHERS_LOGITS in METHODS[method].needs:
        return method
    if method not in PARALLEL_FORMS:
        forms = ", ".join(f"{k} (runs {v})" for k, v in PARALLEL_FORMS.items())
        raise GktError(f"parallel transfer needs a method that partitions the data over K teachers; {method} "
                       f"distils from one teacher at a time (use it with sequential or soup). Parallel methods: {forms}")
    return PARALLEL_FORMS[method]


def check_teachers(student: Classifier, teachers: Sequence[Classifier]) -> None:
    """At least one teacher, each in the student's label space, none given twice (same weights)."""
    if not teachers:
        raise GktError("give at least one teacher")
    seen: dict[str, int] = {}
    for position, teacher in enumerate(teachers, 1):
        check_label_space(teacher, student.class_names, f"the student {student.name}")
        identity = stable_hash(model_identity(teacher))
        if identity in seen:
            raise GktError(f"teacher {position} ({teacher.name}) is the same model as teacher {seen[identity]}; "
                           "give each teacher once")
        seen[identity] = position


def model_identity(model: Classifier) -> dict[str, Any]:
    return {"arch": model.arch.to_dict(), "preprocess": model.preprocess.to_dict(), "class_names": model.class_names,
            "weights": weights_hash(model)}


def weight_soup(models: Sequence[Classifier], reference: Classifier | None = None) -> Classifier:
    """The uniform weight average of ``models`` (parameters and floating-point buffers; integer buffers
    such as BatchNorm's ``num_batches_tracked`` are taken from the first model). Every model must have
    the architecture and preprocessing of ``reference`` (default: the first model)."""
    if not models:
        raise GktError("a soup needs at least one model")
    reference = reference or models[0]
    shapes = {k: v.shape for k, v in reference.net.state_dict().items()}
    for model in models:
        if model.arch != reference.arch or model.preprocess != reference.preprocess:
            raise GktError(f"cannot put {model.name} ({model.arch.describe()}) into a soup with {reference.name} "
                           f"({reference.arch.describe()}): a weight soup needs every model to have the student's "
                           "architecture and preprocessing")
        if {k: v.shape for k, v in model.net.state_dict().items()} != shapes:
            raise GktError(f"cannot put {model.name} into a soup: its weights do not match {reference.name}'s")
    states = [model.net.state_dict() for model in models]
    averaged = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone()
                for k, v in states[0].items()}
    soup = models[0].clone()
    soup.net.load_state_dict(averaged)
    soup.provenance = {"soup": [model.provenance for model in models]}
    return soup


@dataclass
class MultiResult:
    """One multi-teacher mode's result: the final model and its metrics against the original student."""

    mode: str
    model: Classifier
    metrics: dict[str, float]
    steps: list[dict[str, Any]]  # sequential: one row per step; parallel: the run; soup: one row per ingredient
    details: dict[str, Any] = field(default_factory=dict)


MODE_NAMES = ("sequential", "parallel", "soup")  # in table order


def resolve_modes(requested: Sequence[str], method: str) -> list[str]:
    """The modes to run, in table order; ``all`` means every mode the method supports (plain KL has no
    parallel form, as in the paper's Table 9)."""
    unknown = sorted(set(requested) - {*MODE_NAMES, "all"})
    if unknown:
        raise GktError(f"unknown multi-teacher mode(s) {unknown}; choose from {', '.join(MODE_NAMES)} or all")
    if "all" in requested:
        try:
            parallel_method(method)
            return list(MODE_NAMES)
        except GktError:
            return [m for m in MODE_NAMES if m != "parallel"]
    if "parallel" in requested:
        parallel_method(method)
    return [m for m in MODE_NAMES if m in requested]
