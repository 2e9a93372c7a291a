"""``gkt improve``: make a user's model better with the models they have — and certify it is not worse.

The job, in five steps (each a piece gkt already has, joined here):

1. **Splits.** The data's labelled val split (shipped, else carved from train with ``val_fraction``) is cut,
   stratified and seeded, into a *selection* split (``selection_share``) and a *certification* split (the
   rest); the transfer set is a stratified ``fraction`` of the rest of train (its labels unused under
   ``unlabelled``). The three never overlap, and the data's test split is not touched.
2. **Teachers.** The zoo is ranked for the student by complementary knowledge on the selection split (ρ_pos:
   the share of images the teacher gets right and the student wrong, paper §3); a teacher whose ρ_pos does not
   exceed every random-init teacher's (one per architecture) beyond noise (2 standard errors) is dropped.
3. **Search** within ``budget`` transfers, each a job of the one grid runner (results store, resume after a
   kill, ``workers``/Ray): stage 1 the learning rate (the top teacher at every rate of ``lrs``, ≥ 30× around the
   default; with labels, plain cross-entropy fine-tuning at the same rates as the control a teacher must
   beat), stage 2 the teachers (each other kept teacher, and all kept teachers one after another —
   sequential multi-teacher transfer, paper §4.3), stage 3 the epochs (the best transfer, and the best
   control, for ``longer_epochs``). Every candidate is scored on the selection split only.
4. **Certify** the one best candidate on the certification split, used for nothing else (exact one-sided
   McNemar test and lower confidence bound of Δacc; :mod:`gkt.analysis.certify`).
5. **Decide.** Accepted: the improved model is written (``file:`` checkpoint, plus the student's own library
   format where it has one). Refused: "no certified improvement", the student untouched — a refusal is an
   answer. ``decision.json`` holds the decision, its evidence and its risk.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gkt.analysis.certify import Certificate, certify
from gkt.analysis.complementary import analyze
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import new_run_dir, read_json, write_csv, write_json
from gkt.core.runtime import resolve_device
from gkt.data.datasets import ImageDataset
from gkt.engine.predictions import dataset_identity, get_many
from gkt.experiments.grid import STORE_NAME, LocalBackend, RayBackend, ResultsStore, job_key
from gkt.experiments.improve_search import CONTROL, Candidate, Search
from gkt.experiments.improve_setup import (  # noqa: F401  (the data side of improve, re-exported)
    ImproveConfig,
    Splits,
    _cached_model,
    held_out_split,
    load_models,
    load_splits,
)
from gkt.models import Classifier
from gkt.models.checkpoint import load_checkpoint, save_checkpoint
from gkt.models.export import EXPORT_FORMATS, export_model, without_class_map
from gkt.transfer import decoded_for

log = logging.getLogger(__name__)

CANDIDATES_DIR = "candidates"  # in the run directory holding the results store: one folder per candidate
STORE_POINTER = "store.json"  # in a resumed run's directory: where its results store and candidates are
RANDOM_SAMPLES = 1000  # the random-init teachers' seeded stratified sample of the selection split (s.e. ≤ 0.5 pp)


# ---------------------------------------------------------------------------------------------- teachers


@dataclass(frozen=True)
class TeacherRank:
    """One zoo model's complementary knowledge for the student on the selection split."""

    spec: str
    acc: float
    rho_pos: float  # right where the student is wrong
    rho_neg: float  # wrong where the student is right
    random_rho_pos: float  # the best ρ_pos of the random-init teachers (one per architecture) for this student
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_teachers(student: Classifier, teachers: Sequence[Classifier], specs: Sequence[str], selection: ImageDataset,
                  device: torch.device, config: ImproveConfig, workers: int | None = None
                  ) -> tuple[list[TeacherRank], float]:
    """The zoo ranked by ρ_pos for ``student`` on ``selection`` (one forward pass per model, stored), each
    kept when its ρ_pos exceeds every random-init teacher's (one per architecture of the student and the zoo)
    by more than 2 standard errors; and the student's accuracy on ``selection`` (from the same pass)."""
    names = [f"teacher{i}" for i in range(len(teachers))]
    models = [_renamed(student, "student"), *(_renamed(t, n) for t, n in zip(teachers, names))]
    analysis = analyze(models, selection, device, seed=config.seed, semantic=False, precision=config.precision,
                       workers=workers, random_baseline_samples=RANDOM_SAMPLES)
    view = analysis.gains("student")
    # the reference: the best of the random-init teachers (one per architecture) for this student
    random_rho = float(analysis.random.rho_pos[:, 0].max()) if analysis.random is not None else 0.0
    n, n_random = analysis.num_samples, analysis.random.samples if analysis.random is not None else 1
    rows = []
    for row in view.rows:
        spec = specs[names.index(row.teacher)]
        noise = 2 * math.sqrt(row.rho_pos * (1 - row.rho_pos) / n + random_rho * (1 - random_rho) / n_random)
        kept = row.rho_pos - noise > random_rho
        reason = (f"ρ_pos {100 * row.rho_pos:.2f}% vs the best random-init teacher's {100 * random_rho:.2f}% "
                  f"(2 s.e. {100 * noise:.2f} pp): " + ("holds knowledge the student lacks" if kept else
                                                           "no more than a random teacher; dropped"))
        rows.append(TeacherRank(spec, row.acc_teacher, row.rho_pos, row.rho_neg, random_rho, kept, reason))
    return rows, view.acc_student


def _renamed(model: Classifier, name: str) -> Classifier:
    twin = model.clone()
    twin.name = name
    return twin


# ---------------------------------------------------------------------------------------------- certify


def certification_pass(models: Sequence[Classifier], certification: ImageDataset, device: torch.device,
                       precision: str = "fp32", workers: int | None = None) -> list[torch.Tensor]:
    """Per-image correctness of ``models`` (the original and the one chosen candidate) on the certification
    split: the only place that split is read."""
    dataset = decoded_for(list(models), certification, certification)[1]
    preds = get_many(list(models), dataset, device, precision=precision, workers=workers)
    return [p.correct for p in preds]


def class_changes(labels: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                  class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per class on the certification split: images, accuracy before and after, turned right and wrong."""
    rows = []
    for k, name in enumerate(class_names):
        mask = labels == k
        n = int(mask.sum())
        if not n:
            continue
        right, wrong = int((~before & after & mask).sum()), int((before & ~after & mask).sum())
        rows.append({"class": name, "images": n, "acc_before": before[mask].double().mean().item(),
                     "acc_after": after[mask].double().mean().item(), "turned_right": right, "turned_wrong": wrong,
                     "delta_acc": (right - wrong) / n})
    return rows


# ---------------------------------------------------------------------------------------------- decide


@dataclass
class Decision:
    """What ``gkt improve`` decided and why: ``decision.json`` as an object."""

    accepted: bool
    model: str | None  # the file: spec of the improved model (None when refused)
    teachers: list[str]  # the specs the improved model learned from (empty: none, or the control)
    certificate: dict[str, Any] | None  # None: no candidate beat the original on the selection split
    candidates: list[dict[str, Any]]
    student: str = ""
    summary: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    run_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def improve(student: str, zoo: Sequence[str], *, data: str = ImproveConfig.data, unlabelled: bool = False,
            risk: float = ImproveConfig.risk, budget: int = ImproveConfig.budget,
            lrs: Sequence[float] = ImproveConfig.lrs, epochs: int = ImproveConfig.epochs,
            longer_epochs: int = ImproveConfig.longer_epochs, fraction: float = ImproveConfig.fraction,
            max_teachers: int = ImproveConfig.max_teachers, held_out: str = ImproveConfig.held_out,
            selection_share: float = ImproveConfig.selection_share,
            val_fraction: float = ImproveConfig.val_fraction, batch_size: int = ImproveConfig.batch_size,
            seed: int = ImproveConfig.seed, class_map: str | Path | dict[str, Any] | None = None,
            data_dir: str | None = None, zoo_dir: str | None = None, precision: str = ImproveConfig.precision,
            device: str | torch.device = "auto", workers: int = 1, threads: int | None = None,
            backend: LocalBackend | RayBackend | None = None, out: str | Path = "runs", run_dir: str | Path | None = None,
            resume: str | Path | None = None, say: Callable[[str], None] = print) -> Decision:
    """Improve ``student`` with the models of ``zoo`` and certify the result on held-out data (see the module
    docstring); returns the :class:`Decision`, also written as ``RUN_DIR/decision.json`` with the candidates'
    table, the certification's per-class changes and ``findings.json`` (the report's opening). The keyword
    arguments are ``gkt improve``'s options; ``run_dir`` defaults to a fresh directory under ``out``;
    ``resume`` (a run directory of an interrupted improve) reuses its results store and candidates."""
    from gkt.models.class_map import read_class_map

    start = time.perf_counter()
    if isinstance(class_map, (str, Path)):
        class_map = read_class_map(class_map)
    config = ImproveConfig(data=data, unlabelled=unlabelled, risk=risk, budget=budget, lrs=tuple(float(x) for x in lrs),
                           epochs=epochs, longer_epochs=longer_epochs, fraction=fraction, max_teachers=max_teachers,
                           held_out=held_out, selection_share=selection_share, val_fraction=val_fraction, batch_size=batch_size,
                           seed=seed, class_map=class_map, data_dir=data_dir, zoo_dir=zoo_dir, precision=precision)
    zoo = list(dict.fromkeys(zoo))
    if not zoo:
        raise GktError("give the models to learn from: --zoo SPEC [SPEC ...] (or `zoo` for every built zoo model)")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(out, "improve")
    store_root = _store_root(Path(resume), run_dir) if resume else run_dir
    if store_root != run_dir:
        write_json(run_dir / STORE_POINTER, {"store": str((store_root / STORE_NAME).resolve())})
    seconds: dict[str, float] = {}

    splits = load_splits(config.data, config.data_dir, config.held_out, config.val_fraction, config.selection_share, config.fraction,
                         config.seed)
    if len(splits.transfer) < config.batch_size:
        raise GktError(f"{splits.transfer.name}: {len(splits.transfer)} transfer images is fewer than one batch of "
                       f"{config.batch_size}; lower --batch-size to {len(splits.transfer)} or less, or give more data "
                       "(a larger --fraction, if it is below 1)")
    say(f"splits: {len(splits.transfer)} transfer images ({'labels unused' if unlabelled else 'labelled'}), "
        f"{len(splits.selection)} selection and {len(splits.certification)} certification images from "
        f"{splits.val_source}")
    student_model, *zoo_models = load_models([student, *zoo], config)
    ids = {spec: m.identity() for spec, m in zip(zoo, zoo_models)}
    student_id = student_model.identity()
    pairs = [(spec, m) for spec, m in zip(zoo, zoo_models) if ids[spec] != student_id]
    if len(pairs) < len(zoo):
        say("the student itself is in the zoo: left out (a model holds no knowledge it lacks)")
    if not pairs:
        raise GktError("the zoo holds no model other than the student; give other models with --zoo")
    seen: dict[str, str] = {}
    for spec, _ in pairs:  # the same weights twice is one teacher
        seen.setdefault(ids[spec], spec)
    pairs = [(spec, m) for spec, m in pairs if seen[ids[spec]] == spec]

    t0 = time.perf_counter()
    workers_decode = None
    ranking, acc_before = rank_teachers(student_model, [m for _, m in pairs], [s for s, _ in pairs],
                                        splits.selection, torch_device, config, workers_decode)
    seconds["ranking"] = time.perf_counter() - t0
    kept = [r for r in ranking if r.kept][:config.max_teachers]
    say(f"teachers for {student} (selection split, {len(splits.selection)} images; student {100 * acc_before:.2f}%):")
    for r in ranking:
        say(f"  {'kept   ' if r in kept else 'dropped' if not r.kept else 'beyond --max-teachers'} {r.spec}: "
            f"acc {100 * r.acc:.2f}%, {r.reason}")
    models = dict(pairs)
    data_id = stable_hash([dataset_identity(splits.transfer), dataset_identity(splits.selection)])
    store = ResultsStore(store_root / STORE_NAME)
    backend = backend or LocalBackend(workers, threads)
    search = Search(student, student_model, [(r.spec, models[r.spec]) for r in kept], config, splits, acc_before,
                    store, store_root / CANDIDATES_DIR, backend, str(torch_device), data_id)
    t0 = time.perf_counter()
    if not kept and config.unlabelled:
        say("no teacher holds more knowledge for this student than a random one, and without labels there is no "
            "other candidate: nothing to search")
    else:
        with backend.held():  # Ray, say, starts once for the three stages
            search.search(say)
    seconds["search"] = time.perf_counter() - t0
    best = search.best()
    if search.failures and best is None:
        raise GktError(f"every candidate transfer failed (first: {search.failures[0]}); fix that, then rerun with "
                       f"--resume {store_root}")

    t0 = time.perf_counter()
    certificate: Certificate | None = None
    classes: list[dict[str, Any]] = []
    if best is not None and best.selection_acc is not None and best.selection_acc > acc_before:
        chosen_model = _load_candidate(best, student_model)
        before, after = certification_pass([student_model, chosen_model], splits.certification, torch_device,
                                           config.precision)
        certificate = certify(before, after, config.risk)
        classes = class_changes(splits.certification.labels, before, after, splits.certification.class_names)
    seconds["certification"] = time.perf_counter() - t0

    accepted = certificate is not None and certificate.accepted
    model_spec, export = None, None
    if accepted:
        chosen_model.provenance["improve"]["certificate"] = certificate.to_dict()
        model_spec, export = write_model(chosen_model, run_dir, say)
    seconds["total"] = time.perf_counter() - start
    seconds["transfers"] = sum(_job_seconds(store, c) for c in search.candidates)
    decision = Decision(
        accepted=accepted, model=model_spec,
        teachers=list(best.teachers) if best is not None else [],
        certificate=certificate.to_dict() if certificate is not None else None,
        candidates=[c.row(c is best) | {"label": c.label} for c in search.candidates], student=student,
        summary=_summary(student, best, certificate, acc_before, kept, config, search),
        splits=splits.sizes(), ranking=[r.to_dict() for r in ranking],
        chosen=None if best is None else {"label": best.label, "teachers": list(best.teachers), "method": best.method,
                                          "lr": best.lr, "epochs": best.epochs, "selection_acc": best.selection_acc,
                                          "selection_acc_before": acc_before, "checkpoint": best.checkpoint},
        export=export, config=config.to_dict(), seconds={k: round(v, 2) for k, v in seconds.items()},
        run_dir=str(run_dir))
    _write_outputs(run_dir, decision, classes, search)
    _prune(store_root / CANDIDATES_DIR, keep=None if best is None else best.checkpoint)
    say(decision.summary)
    return decision


def _store_root(old: Path, run_dir: Path) -> Path:
    """The directory holding the results store and candidates of the improve run ``old`` resumes."""
    if not old.is_dir():
        raise GktError(f"--resume {old}: no such run directory")
    pointer = old / STORE_POINTER
    try:
        root = Path(read_json(pointer)["store"]).parent if pointer.is_file() else old
    except (ValueError, KeyError, TypeError):
        raise GktError(f"{pointer} is damaged; start a new gkt improve instead of --resume") from None
    if not (root / STORE_NAME).is_file():
        raise GktError(f"--resume {old}: no {STORE_NAME} there (is it a gkt improve run directory?)")
    return root


def _prune(root: Path, keep: str | None) -> None:
    """Once decided, the candidates' models but the chosen one are deleted (their scores stay in the store)."""
    if not root.is_dir():
        return
    kept = Path(keep.removeprefix("file:")).parent.resolve() if keep else None
    for folder in root.iterdir():
        if folder.is_dir() and folder.resolve() != kept:
            shutil.rmtree(folder, ignore_errors=True)


def _load_candidate(candidate: Candidate, student: Classifier) -> Classifier:
    path = Path(candidate.checkpoint.removeprefix("file:"))
    if not path.with_suffix(".json").is_file():
        raise GktError(f"the chosen candidate's model {path} is gone (deleted by hand?); start a new gkt improve")
    model = load_checkpoint(path)
    model.name = student.name
    return model


def _job_seconds(store: ResultsStore, candidate: Candidate) -> float:
    key = job_key(candidate.job)
    return sum(r.seconds or 0.0 for r in store.rows("done") if r.key == key)


def write_model(model: Classifier, run_dir: Path, say: Callable[[str], None], name: str = "model"
                ) -> tuple[str, dict[str, Any] | None]:
    """An improved model as ``file:RUN_DIR/NAME``, and in its own library's format where it has one
    (``RUN_DIR/export`` for ``model``, else ``RUN_DIR/NAME-export``)."""
    path = save_checkpoint(model, run_dir / name)
    spec = f"file:{path.with_suffix('')}"
    export = None
    library = EXPORT_FORMATS.get(model.arch.source if model.arch.source != "class_map"
                                 else model.arch.kwargs["base"]["source"])
    if library is not None:
        try:
            without_class_map(model)
            fmt, where = export_model(model, run_dir / ("export" if name == "model" else f"{name}-export"))
            export = {"format": fmt, "path": str(where)}
        except GktError as exc:
            export = {"format": library, "path": None, "note": str(exc)}
            say(f"not exported in {library}'s format: {exc}")
    return spec, export


def _summary(student: str, best: Candidate | None, certificate: Certificate | None, acc_before: float,
             kept: Sequence[TeacherRank], config: ImproveConfig, search: Search) -> str:
    if certificate is not None and certificate.accepted:
        how = ("plain cross-entropy fine-tuning on your labels beat every teacher on the selection split: the "
               "teachers add nothing beyond the labels here, so the improved model is the fine-tuned one"
               if best.method == CONTROL else f"{best.label}")
        return (f"accepted: {student} improved ({how}); {certificate.sentence()}.")
    if certificate is not None:
        return (f"refused: no certified improvement. The best candidate on the selection split ({best.label}) "
                f"was {certificate.sentence()}; {student} is left as it was.")
    if best is None:
        why = "no teacher holds more knowledge than a random one" if not kept else "every candidate failed"
        return f"refused: no certified improvement — {why}; {student} is left as it was (certification split unused)."
    return (f"refused: no certified improvement — no candidate beat {student} on the selection split "
            f"(best: {best.label}, {100 * best.selection_acc:.2f}% vs {100 * acc_before:.2f}%); "
            f"{student} is left as it was (certification split unused).")


def _write_outputs(run_dir: Path, decision: Decision, classes: list[dict[str, Any]], search: Search) -> None:
    """``decision.json``, ``candidates.csv``, ``teachers.csv``, ``certification_classes.csv`` and
    ``findings.json`` (the report's opening sentences)."""
    from gkt.reporting.improve import findings

    write_json(run_dir / "decision.json", decision.to_dict())
    write_csv(run_dir / "candidates.csv", [{k: v for k, v in row.items() if k != "label"}
                                          for row in decision.candidates] or [{"stage": "-"}])
    write_csv(run_dir / "teachers.csv", decision.ranking or [{"spec": "-"}])
    if classes:
        write_csv(run_dir / "certification_classes.csv", classes)
    write_json(run_dir / "findings.json", {"sentences": findings(decision, classes), "claims": []})
