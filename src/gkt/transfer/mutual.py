"""Mutual transfer (Bi-KD: Jain, Karthik, Gandhi, "Simplifying Knowledge Transfer in Pretrained Models",
TMLR 2025): K pretrained models teach each other at once, in one loop.

Per sample, model *i* learns from a peer *j* where *j* is more confident than *i*'s frozen copy — the KL+DP
rule (paper §4.2, eq. 4) applied both ways: confidence is the true-class probability with labels, the
maximum probability without. Elsewhere *i*'s target is its own frozen copy, so no model forgets what it knew
(eq. 5). With K > 2 models the rule ``best`` takes the most confident peer, ``each`` averages the KL+DP loss
over every peer. The peers' outputs come from the same forward pass (detached): a step costs one forward
and backward per model, plus the frozen copies' outputs, read from the output cache without augmentation.
Optional cross-entropy on the labels (``ce`` > 0) is added per model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset
from gkt.engine.loop import Batch, LoopConfig, Runtime, Task, TrainLoop, predict_logits
from gkt.engine.metrics import correctness, knowledge_gain_loss
from gkt.engine.outputs_cache import CachedOutputs
from gkt.engine.predictions import dataset_identity, get_many
from gkt.engine.sparse_targets import SparseTargets
from gkt.models.classifier import Classifier, check_label_space
from gkt.transfer.base import Targets, confidence, kl_per_sample_soft, select_targets, soft_targets

log = logging.getLogger(__name__)

MUTUAL_RULES = ("best", "each")
# Names of mutual transfer among the methods of a study or an improve search (KL+DP rule with labels / without).
MUTUAL_METHODS = {"mutual": False, "mutual-unsup": True}  # name -> unlabelled


@dataclass(frozen=True)
class MutualConfig:
    """Everything that shapes a mutual run besides the models and the data."""

    epochs: int = 1
    lr: float = 1e-2  # every model moves at once: 30x the one-way transfer default (see gkt improve's lr search)
    weight_decay: float = 1e-3
    momentum: float = 0.9
    optimizer: str = "sgd"
    batch_size: int = 128
    temperature: float = 1.0
    rule: str = "best"  # K > 2: learn from the most confident peer (best) or from every peer (each)
    ce: float = 0.0  # weight of cross-entropy on the labels, per model (0: none)
    unlabelled: bool = False  # the transfer set's labels are not used: confidence = maximum probability
    augment: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in MUTUAL_RULES:
            raise GktError(f"--rule must be one of {', '.join(MUTUAL_RULES)}, got {self.rule!r}")
        if self.ce < 0:
            raise GktError(f"--ce must be a non-negative weight, got {self.ce}")
        if self.ce > 0 and self.unlabelled:
            raise GktError("--ce trains on the labels, but the transfer set is unlabelled (--unlabelled); drop one")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "augment": list(self.augment)}


def mutual_losses(logits: Sequence[torch.Tensor], frozen: Sequence[Targets], labels: torch.Tensor | None,
                  rule: str = "best", temperature: float = 1.0) -> list[torch.Tensor]:
    """Each model's KL+DP loss against its peers' current outputs (detached) and its frozen copy's: per
    sample, the peer where it is more confident than the model's frozen copy, else the frozen copy.
    ``T² · mean_samples KL[target ‖ σ(z_i / T)]``; ``each`` averages that over the peers. The frozen copies'
    outputs may be cached sparse targets (large label spaces): each sample's KL is then taken against
    whichever target it has."""
    k = len(logits)
    with torch.no_grad():
        peers = [z.detach().float() for z in logits]
        peer_conf = torch.stack([confidence(z, labels) for z in peers])  # [K, B]
        own_conf = [confidence(f, labels) for f in frozen]
    out = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        with torch.no_grad():
            if rule == "best" or k == 2:
                pick = peer_conf[others].argmax(0)  # [B], index into others
                best = torch.stack([peers[j] for j in others])[pick, torch.arange(len(pick))]
                choices = [(peer_conf[others].amax(0) > own_conf[i], best)]
            else:
                choices = [(peer_conf[j] > own_conf[i], peers[j]) for j in others]
        if isinstance(frozen[i], SparseTargets):
            own = kl_per_sample_soft(logits[i], soft_targets(frozen[i], temperature), temperature)
            kls = [torch.where(mask, kl_per_sample_soft(logits[i], soft_targets(peer, temperature), temperature),
                               own).mean() for mask, peer in choices]
        else:
            log_p = F.log_softmax(logits[i].float() / temperature, -1)
            kls = [F.kl_div(log_p, F.log_softmax(select_targets(mask, peer, frozen[i].float()) / temperature, -1),
                            reduction="batchmean", log_target=True) for mask, peer in choices]
        out.append(torch.stack(kls).mean() * temperature ** 2)
    return out


class MutualTask(Task):
    """K models as students of each other on the one training loop (see the module docstring); the frozen
    copies' outputs come from the output cache where the runtime allows (no augmentation)."""

    state_format = "gkt-mutual-state/1"
    divergence_hint = "the run is marked failed and no model was saved — lower --lr or --temperature"

    def __init__(self, models: Sequence[Classifier], config: MutualConfig, device: torch.device,
                 transfer_set: ImageDataset, runtime: Runtime):
        if len(models) < 2:
            raise GktError(f"mutual transfer needs at least 2 models, got {len(models)}")
        for m in models[1:]:
            check_label_space(m, models[0].class_names, f"{models[0].name}")
        self.config, self.device = config, device
        self.models = [m.to(device, memory_format=runtime.memory_format) for m in models]
        self.forwards: list[Callable[[torch.Tensor], torch.Tensor]] = list(self.models)
        self.frozen_models = [m.clone().eval().requires_grad_(False) for m in self.models]
        self.cached: list[CachedOutputs] | None = None
        if runtime.cache_outputs and not config.augment:
            data_id = dataset_identity(transfer_set)
            if not runtime.dist.is_main:
                runtime.dist.barrier()  # rank 0 computes and stores the frozen outputs first
            get_many(self.frozen_models, transfer_set, device, data_id=data_id, workers=runtime.loader_workers,
                     temperature=config.temperature)
            self.cached = [CachedOutputs(m, transfer_set, device, data_id=data_id, labels_allowed=not config.unlabelled,
                                         temperature=config.temperature) for m in self.frozen_models]
            if runtime.dist.is_main:
                runtime.dist.barrier()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.models for p in m.parameters()]

    def prepare(self, loop: TrainLoop) -> None:
        self.forwards = [loop.wrap(m) for m in self.models]

    def train(self) -> None:
        for m in self.models:
            m.train()

    def frozen(self, batch: Batch) -> list[Targets]:
        if self.cached is not None:
            return [c.rows(batch.indices, self.device) for c in self.cached]
        with torch.no_grad():
            return [m(batch.x, batch.input_for(m)) for m in self.frozen_models]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = [forward(batch.x, batch.input_for(m)) for forward, m in zip(self.forwards, self.models)]
        labels = None if self.config.unlabelled else batch.labels
        kls = mutual_losses(logits, self.frozen(batch), labels, self.config.rule,
                            self.config.temperature)
        out = {f"kl{i}": kl for i, kl in enumerate(kls)}
        if self.config.ce > 0:
            out |= {f"ce{i}": self.config.ce * F.cross_entropy(z, batch.labels) for i, z in enumerate(logits)}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"models": [m.net.state_dict() for m in self.models]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, s in zip(self.models, state["models"]):
            m.net.load_state_dict(s)


@dataclass
class MutualOutcome:
    models: list[Classifier]  # the trained models, in the order given
    rows: list[dict[str, Any]]  # per model: accuracy before and after on the test set, Δtransf, gain and loss
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def run_mutual(models: Sequence[Classifier], transfer_set: ImageDataset, test_set: ImageDataset | None,
               config: MutualConfig, device: torch.device, runtime: Runtime | None = None) -> MutualOutcome:
    """Train ``models`` (copies; the inputs are left as they are) mutually on ``transfer_set``; with
    ``test_set``, each model's accuracy before and after, Δtransf and knowledge gain and loss on it. Under
    ``torchrun`` (``runtime.dist``) every rank trains on its share of each batch (each model in DDP) and ends
    with the same weights."""
    start = time.perf_counter()
    runtime = runtime or Runtime()
    runtime.dist.shard_batch(config.batch_size)  # before any model is moved or any output cached
    trained = [m.clone().requires_grad_(True) for m in models]
    task = MutualTask(trained, config, device, transfer_set, runtime)
    loop_config = LoopConfig(config.epochs, config.batch_size, config.optimizer, config.lr, config.weight_decay,
                             config.momentum, tuple(config.augment), config.seed, schedule="constant")
    history: list[dict[str, float]] = []
    TrainLoop(task, transfer_set, loop_config, device, runtime, desc="mutual").run(
        lambda loop, losses: history.append({"epoch": loop.epoch, **losses}))
    results = [m.cpu().eval().requires_grad_(False) for m in task.models]
    rows = []
    if test_set is not None:
        before = get_many(list(models), test_set, device, precision=runtime.precision, workers=runtime.loader_workers)
        labels = test_set.labels
        for original, model, stored in zip(models, results, before):
            after = correctness(predict_logits(model, test_set, device, desc="evaluate", precision=runtime.precision),
                                labels)
            gain, loss = knowledge_gain_loss(stored.correct, after)
            acc_before, acc_after = stored.correct.double().mean().item(), after.double().mean().item()
            rows.append({"model": original.name, "acc_before": acc_before, "acc": acc_after,
                         "delta_transf": acc_after - acc_before, "knowledge_gain": gain, "knowledge_loss": loss})
    return MutualOutcome(results, rows, history, time.perf_counter() - start)
