"""KDEP — knowledge distillation as efficient pre-training (He et al., CVPR 2022; SPEC §5).

A randomly initialised student learns a pretrained teacher's penultimate representation:

1. features of both models are taken **before the last activation**, globally average pooled
   (:class:`FeatureTap`; the sizes are discovered by a dummy forward);
2. the non-parametric alignment is computed once: ``μ`` and the principal directions ``V`` of the
   teacher's centred features over the pre-training data (:func:`fit_alignment`, a streaming,
   numerically stable covariance accumulation that equals the direct SVD), ``P = V[:, :d_s]``;
3. targets ``t = PTS((f_t(x) − μ) P)`` with power temperature scaling ``sign(t)·|t/T|^(1/n)``;
4. loss ``loss_w · MSE(f_s(x), t)``; labels are unused.

When the student is wider than the teacher (``d_s > d_t``) there are only ``d_t`` directions: ``P`` is
**zero-padded**, so the surplus student dimensions are trained towards 0 (the SVD adds no information
there). The same holds for directions of zero variance (fewer samples than dimensions).

Baselines for the benchmark share the loop: supervised pre-training, logit KD and a learned linear
alignment (a 1×1 projection, dropped after pre-training). Fine-tuning (:func:`finetune`) puts a new
head on the student and trains the whole network; the classifier's forward always applies the
final activation, so the ReLU stripped for distillation is back.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from gkt.augment import compose
from gkt.data import ImageDataset, iterate_batches, stratified_indices, stratified_subset
from gkt.datasets_extra import load_data
from gkt.models import (
    ArchSpec,
    Classifier,
    DataInfo,
    ModelSpec,
    load_checkpoint,
    load_model,
    save_checkpoint,
    weights_hash,
)
from gkt.models.architectures import TimmNet
from gkt.models.preprocess import to_unit_float
from gkt.training import Recipe, evaluate, make_optimizer, train_supervised, warmup_cosine
from gkt.utils import GktError, atomic_path, cache_home, stable_hash
from gkt.zoo import get_entry

log = logging.getLogger(__name__)

ALIGNMENT_VERSION = 1

# ============================================================================ feature access


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → mean over space, ``[B, N, D]`` (tokens) → mean over tokens, ``[B, D]`` as is."""
    if x.ndim == 4:
        return x.mean((2, 3))
    if x.ndim == 3:
        return x.mean(1)
    if x.ndim == 2:
        return x
    raise GktError(f"cannot pool a feature of shape {tuple(x.shape)} to [B, D]")


class _Captured(Exception):
    """Raised from a hook to stop the forward pass once the wanted feature is computed."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.ELU)


def _dummy_batch(model: Classifier, n: int = 2) -> torch.Tensor:
    """A seeded random raw batch (float in [0, 1]) of the model's input shape, on its device."""
    p = model.preprocess
    x = torch.rand(n, p.channels, p.input_size, p.input_size, generator=torch.Generator().manual_seed(0))
    return x.to(model.mean.device)


def _timm_pre_activation(model: Classifier) -> str:
    """For timm nets whose trunk ends in an activation (ResNets: ``layer4[-1].act2``), that module's
    input. The candidate is the last activation module; it is kept only if a float64 dummy forward shows
    that it runs once and its pooled output *is* the net's pooled pre-logits feature (float64 so that
    a freshly initialised BatchNorm after it, ≈ identity, is still told apart). Otherwise ``features``."""
    candidates = [name for name, m in model.net.named_modules() if isinstance(m, ACTIVATIONS)]
    if not candidates:
        return "features"
    probe = model.clone().double().eval()
    outputs: list[torch.Tensor] = []
    handle = probe.net.get_submodule(candidates[-1]).register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        with torch.no_grad():
            features = probe.features(_dummy_batch(probe).double())
    finally:
        handle.remove()
    if len(outputs) != 1 or outputs[0].ndim < 2:
        return "features"
    pooled = global_pool(outputs[0])
    same = pooled.shape == features.shape and torch.allclose(pooled, features, rtol=1e-10, atol=1e-12)
    return candidates[-1] if same else "features"


# Per network type: how ``auto`` resolves to a layer. gkt's own nets expose the pre-activation feature
# through ``forward_features`` by design.
FEATURE_RESOLVERS: dict[type, Callable[[Classifier], str]] = {TimmNet: _timm_pre_activation}


class FeatureTap:
    """``images -> [B, D]`` penultimate, globally pooled features of a classifier.

    ``layer``: ``auto`` (pre-final-activation: ``forward_features`` for gkt nets, a detected hook for
    timm CNNs), ``features`` (the net's ``forward_features``), ``NAME`` (the *input* of submodule
    ``NAME`` of ``model.net``, pooled) or ``NAME:out`` (its output). ``dim`` is measured by a dummy
    forward. Hooks live only during a call (and stop the forward there), so models stay clean."""

    def __init__(self, model: Classifier, layer: str = "auto"):
        self.model = model
        self.requested = layer
        resolver = next((fn for cls, fn in FEATURE_RESOLVERS.items() if isinstance(model.net, cls)), None)
        self.layer = (resolver(model) if resolver else "features") if layer == "auto" else layer
        self.module: nn.Module | None = None
        self.take_output = False
        if self.layer != "features":
            name, _, where = self.layer.partition(":")
            if where not in ("", "in", "out"):
                raise GktError(f"feature layer {self.layer!r}: suffix must be ':in' or ':out'")
            try:
                self.module = model.net.get_submodule(name)
            except AttributeError as exc:
                names = [n for n, _ in model.net.named_modules() if n][-8:]
                raise GktError(f"{model.name} has no layer {name!r} (last layers: {names})") from exc
            self.take_output = where == "out"
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.dim = int(self(_dummy_batch(model)).shape[1])
        model.train(was_training)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            return self.model.features(images)

        def capture(value: torch.Tensor) -> None:
            raise _Captured(value)

        handle = (self.module.register_forward_hook(lambda m, i, o: capture(o)) if self.take_output else
                  self.module.register_forward_pre_hook(lambda m, args: capture(args[0])))
        try:
            self.model(images)
        except _Captured as captured:
            return global_pool(captured.value)
        finally:
            handle.remove()
        raise GktError(f"layer {self.layer!r} of {self.model.name} was not reached in the forward pass")

    def describe(self) -> str:
        return self.layer if self.layer == self.requested else f"{self.requested} -> {self.layer}"


# ============================================================================ SVD alignment


def power_temperature_scaling(t: torch.Tensor, temperature: float = 0.1, power: float = 3.0) -> torch.Tensor:
    """PTS: ``sign(t) · |t / T|^(1/n)`` (KDEP's target normalisation; T = 0.1, n = 3)."""
    return torch.sign(t) * (t / temperature).abs().pow(1.0 / power)


def _canonical_signs(v: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive (SVD signs are arbitrary)."""
    idx = v.abs().argmax(0)
    signs = torch.sign(v[idx, torch.arange(v.shape[1])])
    return v * torch.where(signs == 0, torch.ones_like(signs), signs)


RANK_TOLERANCE = 1e-6  # singular values below this share of the largest count as zero


@dataclass(frozen=True)
class SvdAlignment:
    """Mean ``[d_t]``, principal directions ``[d_t, r]`` (columns by decreasing singular value) and
    singular values ``[r]`` of the teacher's features; ``r`` = numerical rank."""

    mean: torch.Tensor
    components: torch.Tensor
    singular_values: torch.Tensor
    count: int

    @classmethod
    def from_decomposition(cls, mean: torch.Tensor, s: torch.Tensor, v: torch.Tensor, count: int) -> SvdAlignment:
        order = torch.argsort(s, descending=True)
        s, v = s[order], v[:, order]
        rank = int((s > RANK_TOLERANCE * s[0]).sum()) if len(s) and s[0] > 0 else 0
        return cls(mean.float(), _canonical_signs(v[:, :rank]).float(), s[:rank].float(), count)

    @property
    def teacher_dim(self) -> int:
        return int(self.mean.shape[0])

    def projection(self, student_dim: int) -> torch.Tensor:
        """``P [d_t, d_s]`` = the top ``d_s`` directions, zero columns beyond the rank (``d_s > d_t``)."""
        k = min(student_dim, self.components.shape[1])
        return F.pad(self.components[:, :k], (0, student_dim - k))

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            save_file({"mean": self.mean.contiguous(), "components": self.components.contiguous(),
                       "singular_values": self.singular_values.contiguous()}, str(tmp),
                      metadata={"count": str(self.count)})

    @classmethod
    def load(cls, path: Path) -> SvdAlignment:
        with safe_open(str(path), "pt") as f:
            count = int(f.metadata()["count"])
        t = load_file(str(path))
        return cls(t["mean"], t["components"], t["singular_values"], count)


def svd_alignment_direct(features: torch.Tensor) -> SvdAlignment:
    """Reference: ``U, S, V = svd(X − μ)`` on the stacked features ``X [N, d_t]`` (float64)."""
    x = features.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return SvdAlignment.from_decomposition(mean, s, vh.T, len(x))


class StreamingMoments:
    """Streaming mean and centred scatter ``Σ (x − μ)(x − μ)ᵀ`` in float64, merged batch by batch with
    Chan et al.'s parallel update (no loss of precision from subtracting ``N μ μᵀ`` at the end).
    Memory is ``O(d²)`` whatever ``N``; its eigenvectors are the right singular vectors of ``X − μ``."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, batch: torch.Tensor) -> None:
        x = batch.detach().to("cpu", torch.float64)
        n = len(x)
        if n == 0:
            return
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.count + n
        self.scatter += centred.T @ centred + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def alignment(self) -> SvdAlignment:
        if self.count < 2:
            raise GktError("the SVD alignment needs at least 2 samples")
        eigenvalues, eigenvectors = torch.linalg.eigh(self.scatter)
        return SvdAlignment.from_decomposition(self.mean, eigenvalues.clamp_min(0).sqrt(), eigenvectors, self.count)


@torch.no_grad()
def fit_alignment(tap: FeatureTap, dataset: ImageDataset, device: torch.device, batch_size: int = 500,
                  cache: bool = True, features: torch.Tensor | None = None) -> SvdAlignment:
    """:class:`StreamingMoments` over one eval pass of the teacher on ``dataset`` (or over its already
    computed ``features``, in chunks); cached on disk by teacher weights + feature layer + preprocessing
    + data fingerprint (``$GKT_HOME/kdep``)."""
    key = stable_hash([ALIGNMENT_VERSION, weights_hash(tap.model), tap.layer, tap.model.preprocess.to_dict(),
                       dataset.fingerprint(), len(dataset)])
    path = cache_home() / "kdep" / f"alignment-{key}.safetensors"
    if cache and path.is_file():
        log.info("SVD alignment from cache %s", path)
        return SvdAlignment.load(path)
    moments = StreamingMoments(tap.dim)
    if features is not None:
        for chunk in features.split(batch_size):
            moments.update(chunk)
    else:
        tap.model.to(device).eval()
        for images, _, _ in tqdm(iterate_batches(dataset, batch_size), total=math.ceil(len(dataset) / batch_size),
                                 desc="SVD alignment", leave=False, disable=None):
            moments.update(tap(images.to(device)))
    alignment = moments.alignment()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        alignment.save(path)
    return alignment


# ============================================================================ students


def parse_arch_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``zoo-arch:NAME[?k=v&...]`` or ``timm:ARCH[?k=v&...]`` → (source, name, kwargs); values are JSON
    (``widths=[8,16,32]``) or strings."""
    source, sep, rest = spec.partition(":")
    if source == "timm":
        parsed = ModelSpec.parse(spec)
        if parsed.weights:
            raise GktError(f"{spec}: a student architecture is randomly initialised; drop '@{parsed.weights}'")
        return "timm", parsed.target, dict(parsed.options)
    if source == "zoo-arch" and sep and rest:
        name, _, query = rest.partition("?")
        return "zoo", name, {k: _json_or_text(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    raise GktError(f"student architecture {spec!r}: use zoo-arch:NAME[?k=v&...] (e.g. "
                   "zoo-arch:resnet?widths=[8,16,32]) or timm:ARCH[?k=v&...]")


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_student(spec: str, dataset: ImageDataset, class_names: Sequence[str] | None = None,
                  seed: int = 0) -> Classifier:
    """A randomly initialised classifier of architecture ``spec`` sized to ``dataset`` (input and
    normalisation) with ``class_names`` (default: the dataset's)."""
    source, name, kwargs = parse_arch_spec(spec)
    info = replace(DataInfo.from_dataset(dataset), class_names=tuple(class_names or dataset.class_names))
    torch.manual_seed(seed)
    if source == "timm":
        model = load_model(spec, info).train()
    else:
        arch = ArchSpec("zoo", name, len(info.class_names), info.channels, info.image_size, kwargs)
        model = Classifier.create(arch, info.preprocess(), info.class_names)
    model.name = f"student:{spec}"
    return model


def load_teacher(spec: str, dataset: ImageDataset) -> Classifier:
    """Any model spec as a teacher (eval mode). Its label space need not match the data: KDEP uses only
    features; ``timm:`` teachers are sized to ``dataset``."""
    info = DataInfo.from_dataset(dataset) if ModelSpec.parse(spec).source == "timm" else None
    return load_model(spec, info).eval()


def head_keys(arch: ArchSpec) -> set[str]:
    """State-dict keys of the classification head: those whose shape depends on ``num_classes``."""
    a = {k: v.shape for k, v in arch.build().state_dict().items()}
    b = {k: v.shape for k, v in replace(arch, num_classes=arch.num_classes + 1).build().state_dict().items()}
    return {k for k in a if a[k] != b.get(k)}


def with_new_head(model: Classifier, class_names: Sequence[str], seed: int = 0) -> Classifier:
    """A copy of ``model`` with a freshly initialised head for ``class_names`` (body weights kept)."""
    arch = replace(model.arch, num_classes=len(class_names))
    torch.manual_seed(seed)
    fresh = Classifier.create(arch, model.preprocess, class_names, provenance=dict(model.provenance),
                              name=model.name)
    heads = head_keys(model.arch)
    body = {k: v for k, v in model.net.state_dict().items() if k not in heads}
    missing, unexpected = fresh.net.load_state_dict(body, strict=False)
    if set(missing) != heads or unexpected:
        raise GktError(f"{model.name}: cannot separate body from head (missing {missing}, unexpected {unexpected})")
    return fresh


# ============================================================================ pre-training objectives


@dataclass(frozen=True)
class ObjectiveConfig:
    """Options of the pre-training objectives (KDEP defaults from the official code)."""

    loss_w: float = 3.0
    pts_temperature: float = 0.1
    pts_power: float = 3.0
    kd_temperature: float = 4.0
    teacher_layer: str = "auto"
    student_layer: str = "auto"
    cache_alignment: bool = True


class Objective(nn.Module):
    """A pre-training loss on a batch; may own trainable parameters (dropped after pre-training)."""

    uses_labels = False
    needs_teacher = True

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        return {}


class TeacherOutputs:
    """Raw teacher outputs for a batch, transformed into targets. Un-augmented pre-training sees exactly
    ``dataset[idx]``, so the outputs come from a table computed in one pass; augmented batches run the
    teacher (eval, no grad) on the fly."""

    def __init__(self, teacher_fn: Callable[[torch.Tensor], torch.Tensor], dataset: ImageDataset,
                 device: torch.device, precompute: bool, batch_size: int = 500):
        self.teacher_fn = teacher_fn
        self.table: torch.Tensor | None = None
        if precompute:
            with torch.no_grad():
                self.table = torch.cat([teacher_fn(images.to(device)).float() for images, _, _ in
                                        iterate_batches(dataset, batch_size)])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx.to(self.table.device)] if self.table is not None else self.teacher_fn(x)


class _FeatureDistillation(Objective):
    """Shared part of KDEP and the learned-alignment baseline: teacher and student taps, the teacher's
    raw features (table or on the fly) and ``μ`` (+ ``V``) from the SVD alignment."""

    def __init__(self, cfg: ObjectiveConfig, teacher: Classifier, student: Classifier, dataset: ImageDataset,
                 device: torch.device, precompute: bool):
        super().__init__()
        self.cfg = cfg
        teacher.to(device).eval()
        self.teacher_tap = FeatureTap(teacher, cfg.teacher_layer)
        self.student_tap = FeatureTap(student, cfg.student_layer)
        self.features = TeacherOutputs(self.teacher_tap, dataset, device, precompute)
        start = time.perf_counter()
        self.alignment = fit_alignment(self.teacher_tap, dataset, device, cache=cfg.cache_alignment,
                                       features=self.features.table)
        self.alignment_seconds = time.perf_counter() - start
        self.register_buffer("mean", self.alignment.mean.to(device))

    def scaled(self, t: torch.Tensor) -> torch.Tensor:
        return power_temperature_scaling(t, self.cfg.pts_temperature, self.cfg.pts_power)

    def extra(self) -> dict[str, Any]:
        return {"teacher_layer": self.teacher_tap.describe(), "student_layer": self.student_tap.describe(),
                "teacher_dim": self.teacher_tap.dim, "student_dim": self.student_tap.dim,
                "alignment_seconds": round(self.alignment_seconds, 2)}


class KdepObjective(_FeatureDistillation):
    """``loss_w · MSE(f_s(x), PTS((f_t(x) − μ) P))`` with the SVD alignment ``P = V[:, :d_s]``."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.register_buffer("projection", self.alignment.projection(self.student_tap.dim).to(self.mean.device))

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        target = self.scaled((self.features(x, idx).to(x.device) - self.mean) @ self.projection)
        return self.cfg.loss_w * F.mse_loss(self.student_tap(x), target)

    def extra(self) -> dict[str, Any]:
        s, d_s, rank = self.alignment.singular_values, self.student_tap.dim, self.alignment.components.shape[1]
        return {**super().extra(), "rank": int(rank), "zero_padded_dims": max(0, d_s - int(rank)),
                "explained_variance": round((s[:d_s].pow(2).sum() / s.pow(2).sum()).item(), 4)}


class LinearAlignObjective(_FeatureDistillation):
    """Baseline: a learned linear (1×1) projection ``W: d_s → d_t`` of the student feature regressed on
    the PTS-scaled centred teacher feature (same targets as KDEP before projection; only the alignment
    differs). ``W`` is trained with the student and dropped afterwards."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.projector = nn.Linear(self.student_tap.dim, self.teacher_tap.dim).to(self.mean.device)

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        target = self.scaled(self.features(x, idx).to(x.device) - self.mean)
        return self.cfg.loss_w * F.mse_loss(self.projector(self.student_tap(x)), target)


class LogitKdObjective(Objective):
    """Baseline: Hinton KD, ``T² · KL(σ(z_t/T) ‖ σ(z_s/T))``; the student's head predicts the teacher's
    classes."""

    def __init__(self, cfg: ObjectiveConfig, teacher: Classifier, student: Classifier, dataset: ImageDataset,
                 device: torch.device, precompute: bool):
        super().__init__()
        if student.num_classes != teacher.num_classes:
            raise GktError(f"logit KD needs a student head over the teacher's {teacher.num_classes} classes "
                           f"(the student predicts {student.num_classes})")
        self.temperature = cfg.kd_temperature
        self.logits = TeacherOutputs(teacher.to(device).eval(), dataset, device, precompute)

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        teacher = self.logits(x, idx).to(x.device)
        return t * t * F.kl_div(F.log_softmax(student(x) / t, 1), F.log_softmax(teacher / t, 1),
                                log_target=True, reduction="batchmean")


class SupervisedObjective(Objective):
    """Baseline: cross-entropy on the pre-training labels."""

    uses_labels = True
    needs_teacher = False

    def __init__(self, *args: Any):
        super().__init__()

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student(x), labels)


OBJECTIVES: dict[str, type[Objective]] = {"kdep": KdepObjective, "linear-align": LinearAlignObjective,
                                          "logit-kd": LogitKdObjective, "supervised": SupervisedObjective}


def make_objective(name: str, cfg: ObjectiveConfig, teacher: Classifier | None, student: Classifier,
                   dataset: ImageDataset, device: torch.device, precompute: bool) -> Objective:
    if name not in OBJECTIVES:
        raise GktError(f"unknown pre-training objective {name!r}; known: {', '.join(OBJECTIVES)}")
    if OBJECTIVES[name].needs_teacher and teacher is None:
        raise GktError(f"objective {name!r} needs a teacher (--teacher SPEC)")
    return OBJECTIVES[name](cfg, teacher, student, dataset, device, precompute)


# ============================================================================ pre-training and fine-tuning


@dataclass
class PretrainResult:
    student: Classifier
    losses: list[float]
    seconds: float  # wall time of everything: teacher passes, alignment and training
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def pretrain(student: Classifier, dataset: ImageDataset, objective_name: str, recipe: Recipe,
             device: torch.device, teacher: Classifier | None = None,
             cfg: ObjectiveConfig = ObjectiveConfig(), desc: str = "pretrain") -> PretrainResult:
    """Pre-train ``student`` in place with an objective from :data:`OBJECTIVES` (SGD/AdamW, warm-up +
    cosine). Without augmentation the teacher's outputs are computed once per sample, not per step."""
    start = time.perf_counter()
    student.to(device)
    objective = make_objective(objective_name, cfg, teacher, student, dataset, device,
                               precompute=not recipe.augment)
    steps_per_epoch = len(dataset) // recipe.batch_size
    if steps_per_epoch == 0:
        raise GktError(f"{dataset.name}: {len(dataset)} samples is fewer than one batch of {recipe.batch_size}")
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    augment = compose(recipe.augment)
    optimizer = make_optimizer([*student.parameters(), *objective.parameters()], recipe.optimizer, recipe.lr,
                               recipe.weight_decay)
    total = steps_per_epoch * recipe.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total, int(recipe.warmup_epochs * steps_per_epoch)))
    train_start = time.perf_counter()
    losses = []
    student.train()
    for epoch in range(recipe.epochs):
        running = torch.zeros((), device=device)
        for images, labels, idx in tqdm(iterate_batches(dataset, recipe.batch_size, shuffle=True, generator=generator,
                                                        drop_last=True), total=steps_per_epoch,
                                        desc=f"{desc} {epoch + 1}/{recipe.epochs}", leave=False, disable=None):
            x = augment(to_unit_float(images.to(device, non_blocking=True)), generator)
            loss = objective.loss(student, x, labels.to(device), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.detach()
        losses.append((running / steps_per_epoch).item())
        if not math.isfinite(losses[-1]):
            raise GktError(f"{desc}: loss became {losses[-1]} in epoch {epoch + 1}; lower the learning rate")
        log.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, recipe.epochs, losses[-1])
    end = time.perf_counter()
    student.provenance = {**student.provenance, "kdep_pretrain": {
        "objective": objective_name, "recipe": recipe.to_dict(), "config": asdict(cfg), "data": dataset.name,
        "samples": len(dataset), "teacher": teacher.name if teacher is not None and objective.needs_teacher else None,
        **objective.extra()}}
    return PretrainResult(student.eval(), losses, end - start, end - train_start, objective.extra())


def finetune(pretrained: Classifier, train: ImageDataset, test: ImageDataset, recipe: Recipe,
             device: torch.device, desc: str = "finetune") -> tuple[Classifier, float]:
    """New head for ``train``'s classes, then the whole network is trained; returns (model, test acc)."""
    model = with_new_head(pretrained, train.class_names, seed=recipe.seed)
    train_supervised(model, train, recipe, device, desc=desc)
    return model.eval(), evaluate(model, test, device)


# ============================================================================ benchmark


@dataclass(frozen=True)
class Method:
    """One pre-training arm of the benchmark: an objective (``None``: no pre-training) on a share of the
    pre-training pool."""

    objective: str | None
    fraction: float

    @property
    def name(self) -> str:
        return "none" if self.objective is None else f"{self.objective}-{100 * self.fraction:g}%"


def default_methods(fraction: float) -> tuple[Method, ...]:
    return (Method(None, 0.0), Method("supervised", fraction), Method("supervised", 1.0), Method("logit-kd", fraction),
            Method("linear-align", fraction), Method("kdep", fraction))


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run. All pre-training arms share one recipe (same epochs,
    hence the same number of student steps on the same 10% data: equal compute); supervised-100% runs
    the same epochs on the whole pool. Every arm is followed by the same fine-tuning."""

    teacher: str = "split"  # "split": a zoo-resnet-recipe teacher trained on the pre-training pool only
    student_arch: str = "zoo-arch:resnet?widths=[8,16,32]"
    pretrain_data: str = "fmnist"
    pretrain_classes: str | None = "0-4"
    pool_per_class: int | None = None  # cap of the "100%" pool (quick runs)
    fraction: float = 0.1
    downstream: tuple[str, ...] = ("fmnist[5-9]", "digits")
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=10, lr=0.02, weight_decay=5e-4,
                                                                   batch_size=128))
    finetune_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=15, lr=0.05, weight_decay=5e-4,
                                                                   batch_size=32))
    finetune_per_class: int = 20
    test_per_class: int | None = None
    teacher_epochs: int | None = None  # override the split teacher's recipe (quick runs)
    objective: ObjectiveConfig = ObjectiveConfig(cache_alignment=False)

    def quick(self) -> BenchmarkConfig:
        """A seconds-long smoke version (one seed, one epoch, tiny pools)."""
        return replace(self, seeds=self.seeds[:1], pool_per_class=60, finetune_per_class=10, test_per_class=20,
                       teacher_epochs=1, pretrain_recipe=replace(self.pretrain_recipe, epochs=1, batch_size=16),
                       finetune_recipe=replace(self.finetune_recipe, epochs=1, batch_size=16))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_task(spec: str) -> tuple[str, str | None]:
    """``DATA`` or ``DATA[CLASSES]`` (e.g. ``fmnist[5-9]``, ``digits``, ``folder:/data/pets``)."""
    if spec.endswith("]") and "[" in spec:
        data, _, classes = spec[:-1].rpartition("[")
        return data, classes
    return spec, None


def _capped(dataset: ImageDataset, per_class: int | None, seed: int) -> ImageDataset:
    """A stratified ``per_class`` subset (all samples of classes that have fewer)."""
    if per_class is None:
        return dataset
    counts = dataset.class_counts()
    if per_class >= int(counts.min()):
        return dataset
    idx = stratified_indices(dataset.labels, per_class=per_class, seed=seed)
    return dataset.subset(idx, f"per_class={per_class},seed={seed}")


def load_task(spec: str, seed: int, train_per_class: int | None, test_per_class: int | None = None,
              data_dir: str | None = None) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of a downstream task spec; train capped at ``train_per_class`` (seeded)."""
    data, classes = parse_task(spec)
    train = load_data(data, "train", classes=classes, data_dir=data_dir)
    test = load_data(data, "test", classes=classes, data_dir=data_dir)
    return _capped(train, train_per_class, seed), _capped(test, test_per_class, 0)


def split_teacher(pool: ImageDataset, device: torch.device, epochs: int | None = None,
                  test: ImageDataset | None = None) -> tuple[Classifier, dict[str, Any]]:
    """A teacher with the zoo's ResNet architecture and recipe trained on ``pool`` only (so it has never
    seen the downstream classes); cached in ``$GKT_HOME/kdep/teachers``."""
    entry = get_entry("resnet")
    recipe = entry.recipe if epochs is None else replace(entry.recipe, epochs=epochs)
    arch = entry.arch_spec(pool.num_classes)
    key = stable_hash([arch.to_dict(), entry.preprocess().to_dict(), recipe.to_dict(), pool.fingerprint(), len(pool)])
    path = cache_home() / "kdep" / "teachers" / f"resnet-split-{key}.safetensors"
    if path.is_file():
        teacher = load_checkpoint(path)
        return teacher.eval(), dict(teacher.provenance)
    torch.manual_seed(recipe.seed)
    teacher = Classifier.create(arch, entry.preprocess(), pool.class_names, name="teacher:resnet-split")
    start = time.perf_counter()
    train_supervised(teacher, pool, recipe, device, desc="split teacher")
    teacher.provenance = {"kdep_split_teacher": True, "recipe": recipe.to_dict(), "train_data": pool.name,
                          "train_seconds": round(time.perf_counter() - start, 1),
                          "test_acc": evaluate(teacher, test, device) if test is not None else None}
    save_checkpoint(teacher.cpu(), path)
    return teacher.eval(), dict(teacher.provenance)


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]]  # one per (method, seed, task)
    summary: list[dict[str, Any]]  # one per method
    teacher: dict[str, Any]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(t) > 1 else 0.0)


def summarize(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Per method: mean ± std over seeds of each task's accuracy and of the task mean, mean pre-training
    time. Methods keep their first-seen order."""
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        seeds = sorted({r["seed"] for r in mine})
        entry: dict[str, Any] = {"method": method, "pretrain_samples": mine[0]["pretrain_samples"],
                                 "pretrain_s": round(_mean_std([r["pretrain_s"] for r in mine])[0], 1)}
        for task in tasks:
            m, s = _mean_std([r["acc"] for r in mine if r["task"] == task])
            entry[task] = f"{100 * m:.2f} ± {100 * s:.2f}"
        per_seed = [sum(r["acc"] for r in mine if r["seed"] == seed) / len(tasks) for seed in seeds]
        m, s = _mean_std(per_seed)
        entry.update(mean=f"{100 * m:.2f} ± {100 * s:.2f}", mean_acc=m, mean_std=s, seeds=len(seeds))
        summary.append(entry)
    return summary


def run_benchmark(cfg: BenchmarkConfig, device: torch.device, data_dir: str | None = None,
                  methods: Sequence[Method] | None = None,
                  progress: Callable[[str], None] = log.info) -> BenchmarkResult:
    """Pre-train one student per (method, seed), fine-tune each on every downstream task, measure."""
    methods = list(methods or default_methods(cfg.fraction))
    make_optimizer([nn.Parameter(torch.zeros(1))], "sgd", 0.1, 0.0)  # first use imports torch._dynamo (~s): not timed
    pool = _capped(load_data(cfg.pretrain_data, "train", classes=cfg.pretrain_classes, data_dir=data_dir),
                   cfg.pool_per_class, 0)
    needs_teacher = any(m.objective and OBJECTIVES[m.objective].needs_teacher for m in methods)
    teacher, teacher_info = None, {}
    if needs_teacher and cfg.teacher == "split":
        test = _capped(load_data(cfg.pretrain_data, "test", classes=cfg.pretrain_classes, data_dir=data_dir),
                       cfg.test_per_class, 0)
        teacher, teacher_info = split_teacher(pool, device, cfg.teacher_epochs, test)
        teacher_info = {"spec": "split (zoo resnet recipe on the pre-training pool)", **teacher_info}
    elif needs_teacher:
        teacher = load_teacher(cfg.teacher, pool)
        teacher_info = {"spec": cfg.teacher, **{k: teacher.provenance.get(k) for k in ("train_data", "test_acc")}}
    rows = []
    for seed in cfg.seeds:
        tasks = {spec: load_task(spec, seed, cfg.finetune_per_class, cfg.test_per_class, data_dir)
                 for spec in cfg.downstream}
        for method in methods:
            data = stratified_subset_or_all(pool, method.fraction, seed)
            names = teacher.class_names if method.objective == "logit-kd" else pool.class_names
            student = build_student(cfg.student_arch, pool, names, seed=seed)
            seconds = 0.0
            if method.objective is not None:
                result = pretrain(student, data, method.objective, replace(cfg.pretrain_recipe, seed=seed), device,
                                  teacher=teacher, cfg=cfg.objective, desc=f"{method.name} s{seed}")
                seconds = result.seconds
            for spec, (train, test) in tasks.items():
                _, acc = finetune(student, train, test, replace(cfg.finetune_recipe, seed=seed), device,
                                  desc=f"finetune {spec}")
                rows.append({"method": method.name, "seed": seed, "task": spec, "acc": acc,
                             "pretrain_s": round(seconds, 2), "pretrain_samples": len(data) if method.objective else 0,
                             "finetune_train": len(train), "test": len(test)})
                progress(f"seed {seed} {method.name:>20} {spec:>12}: acc {100 * acc:.2f}% "
                         f"(pre-training {seconds:.1f}s)")
    return BenchmarkResult(rows, summarize(rows, cfg.downstream), teacher_info)


def stratified_subset_or_all(pool: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    return pool if fraction >= 1 or fraction <= 0 else stratified_subset(pool, fraction=fraction, seed=seed)


def plot_benchmark(summary: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Mean downstream accuracy (± std over seeds) against pre-training wall time, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, row in enumerate(summary):
        ax.errorbar(row["pretrain_s"], 100 * row["mean_acc"], yerr=100 * row["mean_std"], fmt="o", capsize=3,
                    color=f"C{i}", label=row["method"])
        ax.annotate(row["method"], (row["pretrain_s"], 100 * row["mean_acc"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_xlabel("pre-training wall time (s)")
    ax.set_ylabel("mean downstream accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
