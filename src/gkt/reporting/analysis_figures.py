"""Figures of the complementary-knowledge analysis (paper Figs. 1–2), as PNG files (matplotlib, Agg)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gkt.analysis.complementary import Analysis, x_label
from gkt.core.registry import Registry
from gkt.reporting.figures import model_label, pyplot, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FigureFn = Callable[[Analysis, "str | None"], "Figure | None"]


FIGURES: Registry[FigureFn] = Registry("analysis figure")
register_figure = FIGURES.register


MAX_ANNOTATED = 16  # annotate matrix cells / show class names up to this many models / classes


def _pairs(a: Analysis) -> tuple[torch.Tensor, torch.Tensor]:
    idx = a.pair_mask.nonzero()
    return idx[:, 0], idx[:, 1]


@register_figure("fig1a_rho_pos_vs_delta_acc")
def rho_pos_vs_delta_acc(a: Analysis, student: str | None) -> Figure:
    """Fig. 1a: complementary knowledge ρ_pos against the performance difference, every ordered pair."""
    plt = pyplot()
    t, s = _pairs(a)
    fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
    cmap = plt.get_cmap("tab10" if len(a.models) <= 10 else "tab20")
    for i, name in enumerate(a.models):
        sel = t == i
        ax.scatter((100 * a.delta_acc[t[sel], s[sel]]).numpy(), (100 * a.rho_pos[t[sel], s[sel]]).numpy(), s=36, alpha=0.85,
                   color=cmap(i % cmap.N), edgecolor="white", linewidth=0.5, label=model_label(name))
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    # at Δacc = 0, just below the top of the axes whatever the data's range (in data units, a label placed
    # off the axes made constrained layout collapse them: matplotlib warned and skipped the layout)
    ax.text(0, 0.98, " equal accuracy", color="grey", va="top", ha="left", fontsize=9,
            transform=ax.get_xaxis_transform())
    if a.random is not None:
        level = 100 * a.random.rho_pos.mean().item()
        ax.axhline(level, color="crimson", linestyle="--", linewidth=1.2,
                   label=f"random-init teacher (mean {level:.2f}%)")
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="ρ_pos = 1%")
    ax.set_xlabel("performance difference Δacc = acc(teacher) − acc(student)  [points]")
    ax.set_ylabel("complementary knowledge ρ_pos  [% of samples]")
    ax.set_title(f"Positive prediction flips, {int(a.pair_mask.sum())} ordered pairs ({a.dataset})")
    ax.legend(title="teacher", fontsize=8, title_fontsize=9, loc="upper left", ncol=2 if len(a.models) > 8 else 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return fig


@register_figure("fig1b_entropy_vs_rho_pos")
def entropy_vs_rho_pos(a: Analysis, student: str | None) -> Figure:
    """Fig. 1b: entropy of the per-class distribution of positive flips against ρ_pos, coloured by Δacc."""
    plt = pyplot()
    t, s = _pairs(a)
    dacc = (100 * a.delta_acc[t, s]).numpy()
    bound = max(1.0, float(abs(dacc).max()))
    fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
    points = ax.scatter((100 * a.rho_pos[t, s]).numpy(), a.entropy[t, s].numpy(), c=dacc, cmap="coolwarm", vmin=-bound, vmax=bound,
                        s=40, edgecolor="black", linewidth=0.3)
    fig.colorbar(points, ax=ax, label="Δacc [points] (blue: weaker teacher, red: stronger)")
    uniform = torch.tensor(float(a.num_classes)).log().item()
    ax.axhline(uniform, color="black", linestyle="--", linewidth=1, label=f"uniform over {a.num_classes} classes (ln c)")
    ax.set_xlabel("complementary knowledge ρ_pos  [% of samples]")
    ax.set_ylabel("entropy of per-class flip distribution [nats]")
    ax.set_title("Concentration of complementary knowledge over classes")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _weak_equal_strong(a: Analysis, student: str | None) -> list[tuple[str, int, int]]:
    """The distinct pairs with the weakest, the closest and the strongest teacher (for ``student`` if given),
    in order of Δacc."""
    mask = a.pair_mask.clone()
    if student is not None:
        mask &= torch.arange(len(a.models))[None, :] == a.index(student)
    dacc = a.delta_acc.masked_fill(~mask, float("nan"))
    flat = dacc.view(-1)
    picks = {"weakest teacher": flat.nan_to_num(float("inf")).argmin(),
             "closest accuracy": flat.abs().nan_to_num(float("inf")).argmin(),
             "strongest teacher": flat.nan_to_num(float("-inf")).argmax()}
    m = len(a.models)
    unique = {int(i): label for label, i in reversed(picks.items())}  # a pair picked twice keeps its first label
    return [(label, i // m, i % m) for i, label in sorted(unique.items(), key=lambda item: dacc.view(-1)[item[0]])]


@register_figure("fig2a_per_class_sorted")
def per_class_sorted(a: Analysis, student: str | None) -> Figure:
    """Fig. 2a: sorted per-class complementary knowledge (flips as % of the class's samples)."""
    plt = pyplot()
    picks = _weak_equal_strong(a, student)
    fig, axes = plt.subplots(1, len(picks), figsize=(4.6 * len(picks) + 0.8, 4.6), layout="constrained", sharey=True,
                             squeeze=False)
    for ax, (label, t, s) in zip(axes[0], picks):
        order = a.class_order[t, s]
        rates = (100 * a.class_rate[t, s, order]).numpy()
        ax.bar(range(a.num_classes), rates, color="steelblue")
        if a.num_classes <= 2 * MAX_ANNOTATED:
            ax.set_xticks(range(a.num_classes), [a.class_names[k] for k in order.tolist()], rotation=60, ha="right",
                          fontsize=8)
        else:
            ax.set_xlabel("classes, sorted")
        ax.set_title(f"{label} (Δacc {100 * a.delta_acc[t, s]:+.1f})\n{model_label(a.models[t])} → {model_label(a.models[s])}, "
                     f"ρ_pos {100 * a.rho_pos[t, s]:.1f}%", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("complementary knowledge per class\n[% of the class's samples]")
    return fig


@register_figure("fig2b_semantic_top_x")
def semantic_top_x(a: Analysis, student: str | None) -> Figure | None:
    """Fig. 2b: class-name similarity among the classes holding the top-X% of flips, relative to the mean."""
    plt = pyplot()
    if a.similarity is None:
        return None
    mask = a.pair_mask
    labels, means, errs = [], [], []
    for x, rel in a.semantic_rel.items():
        v = 100 * rel[mask]
        v = v[~v.isnan()]
        size = a.classes_holding[x][mask].clamp_min(2).double().mean().item()
        labels.append(f"top-{x_label(x)}\n({size:.1f} classes)")
        means.append(v.mean().item())
        errs.append((v.std() / len(v) ** 0.5).item() if len(v) > 1 else 0.0)
    fig, ax = plt.subplots(figsize=(6.8, 4.6), layout="constrained")
    ax.bar(labels, means, yerr=errs, capsize=4, color="darkseagreen", edgecolor="black", linewidth=0.5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("classes holding the top-X% of positive flips (at least 2)")
    ax.set_ylabel("similarity vs. mean class similarity [%]")
    ax.set_title(f"Semantic similarity of class names (mean ± s.e. over pairs)\n{a.similarity.model.split(' ')[0]}",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


@register_figure("rho_pos_heatmap")
def rho_pos_heatmap(a: Analysis, student: str | None) -> Figure:
    """ρ_pos for every ordered pair: rows are teachers, columns students."""
    plt = pyplot()
    m = len(a.models)
    values = (100 * a.rho_pos).masked_fill(~a.pair_mask, float("nan"))
    size = max(5.5, 0.62 * m + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    image = ax.imshow(values.numpy(), cmap="viridis")
    fig.colorbar(image, ax=ax, label="ρ_pos [% of samples]", shrink=0.8)
    names = [f"{model_label(n)} ({100 * acc:.1f})" for n, acc in zip(a.models, a.accuracy.tolist())]
    ax.set_xticks(range(m), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(m), names, fontsize=8)
    if m <= MAX_ANNOTATED:
        top = values.nan_to_num(0).max().item()
        for t in range(m):
            for s in range(m):
                if t != s:
                    v = values[t, s].item()
                    ax.text(s, t, f"{v:.1f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 * top else "white")
    ax.set_xlabel("student (test accuracy %)")
    ax.set_ylabel("teacher (test accuracy %)")
    ax.set_title("Complementary knowledge ρ_pos(teacher → student) [%]")
    return fig


@register_figure("gains")
def gains_bars(a: Analysis, student: str | None) -> Figure | None:
    """Where to find gains for ``student``: teachers ranked by ρ_pos, with ρ_neg and Δacc."""
    plt = pyplot()
    if student is None:
        return None
    view = a.gains(student)
    rows = list(reversed(view.rows))
    y = torch.arange(len(rows)).double().numpy()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 2.2), layout="constrained")
    ax.barh(y + 0.2, [100 * r.rho_pos for r in rows], height=0.4, color="seagreen", label="ρ_pos (teacher right, student wrong)")
    ax.barh(y - 0.2, [100 * r.rho_neg for r in rows], height=0.4, color="indianred", label="ρ_neg (student right, teacher wrong)")
    ax.set_yticks(y, [f"{model_label(r.teacher)} (Δacc {100 * r.delta_acc:+.1f})" for r in rows], fontsize=9)
    if a.random is not None:
        ax.axvline(100 * a.random_per_student()[a.index(student)].item(), color="black", linestyle="--", linewidth=1,
                   label="random-init teachers (mean ρ_pos)")
    ax.set_xlabel("% of samples")
    title = f"Where to find gains for {model_label(student)} (acc {100 * view.acc_student:.1f}%)"
    # over the figure, not the axes (long teacher names push the axes right), wrapped: never clipped
    fig.suptitle("\n".join([*textwrap.wrap(title, 70), f"all teachers together: {100 * view.any_teacher_rho_pos:.1f}%"]),
                 fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2)
    ax.grid(axis="x", alpha=0.3)
    return fig


def write_figures(a: Analysis, out_dir: str | Path, student: str | None = None, dpi: int = 130) -> list[Path]:
    """Render every registered figure that applies and save it as ``out_dir/<name>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in FIGURES.items():
        fig = make(a, student)
        if fig is None:
            continue
        written.append(save_figure(fig, out_dir / f"{name}.png", dpi=dpi))
    return written
