"""The report's pictures, drawn with matplotlib and embedded as PNG data URIs (no network to view).

Each function takes the rows `charter.report.queries` read and returns a `Figure` (title, alt text
and the PNG as a data URI), or None when there is nothing to draw. matplotlib is imported here
only, with the non-interactive Agg backend, so `import charter` never pays for it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Colours that stay apart for colour-blind readers (Okabe-Ito).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


@dataclass
class Figure:
    """One embedded picture."""

    key: str
    title: str
    alt: str
    png: bytes

    @property
    def data_uri(self) -> str:
        """The PNG as a `data:` URI, for an <img> that needs no file beside the page."""
        return f"data:image/png;base64,{base64.b64encode(self.png).decode('ascii')}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _render(key: str, title: str, alt: str, draw: Callable[[Any], None], size: tuple[float, float]) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        ax.set_title(title, fontsize=11)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return Figure(key, title, alt, buffer.getvalue())


def latency_plot(latencies: dict[str, list[float]]) -> Figure | None:
    """Box plot of request latency per step (cache hits left out: they cost nothing)."""
    steps = [s for s, v in latencies.items() if v]
    if not steps:
        return None

    def draw(ax: Any) -> None:
        ax.boxplot([latencies[s] for s in steps], tick_labels=steps, showfliers=False, vert=False)
        ax.set_xlabel("latency (ms)")

    return _render(
        "latency",
        "Request latency per step",
        f"latency per step: {', '.join(steps)}",
        draw,
        (7, 0.6 + 0.5 * len(steps)),
    )


def principle_plot(rows: list[dict[str, Any]], key: str, title: str) -> Figure | None:
    """Horizontal bars: how often each principle was drawn."""
    if not rows:
        return None
    names = [str(r["principle"]) for r in rows][::-1]
    counts = [int(r["n"]) for r in rows][::-1]

    def draw(ax: Any) -> None:
        ax.barh(names, counts, color=PALETTE[0])
        ax.set_xlabel("times drawn")
        ax.tick_params(axis="y", labelsize=8)

    return _render(key, title, f"{title}: {len(names)} principles", draw, (7, 0.8 + 0.25 * len(names)))


def label_plot(labels: list[dict[str, Any]]) -> Figure | None:
    """Histogram of P(response_a) per label method: where the soft labels fall."""
    if not labels:
        return None
    by_method: dict[str, list[float]] = {}
    for row in labels:
        if row.get("prob_a") is not None:
            by_method.setdefault(f"{row['method']} ({row['label_source']})", []).append(float(row["prob_a"]))
    if not by_method:
        return None

    def draw(ax: Any) -> None:
        bins = [i / 20 for i in range(21)]
        for i, (name, values) in enumerate(sorted(by_method.items())):
            ax.hist(
                values,
                bins=bins,
                alpha=0.7,
                label=f"{name}, n={len(values)}",
                color=PALETTE[i % len(PALETTE)],
            )
        ax.set_xlabel("P(response A is better)")
        ax.set_ylabel("pairs")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)

    return _render(
        "labels", "Soft-label distribution", f"label distribution over {len(labels)} pairs", draw, (7, 3.2)
    )


def position_plot(rows: list[dict[str, Any]]) -> Figure | None:
    """Mean probability given to the option shown first, straight vs swapped (0.5 = no bias)."""
    if not rows:
        return None
    names = ["options swapped" if r["swapped"] else "as sampled" for r in rows]
    values = [float(r["p_first"]) for r in rows]

    def draw(ax: Any) -> None:
        ax.bar(names, values, color=[PALETTE[1] if "swapped" in n else PALETTE[0] for n in names])
        ax.axhline(0.5, color="#555555", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean P(option shown first)")

    return _render(
        "position",
        "Position bias",
        "position bias: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, values, strict=True)),
        draw,
        (5, 3),
    )


def training_plot(runs: list[dict[str, Any]]) -> Figure | None:
    """Loss curves of every training run that logged one (`metrics.loss_history`)."""
    curves = [(r, r["metrics"].get("loss_history") or []) for r in runs]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return None

    def draw(ax: Any) -> None:
        for i, (run, curve) in enumerate(curves):
            ax.plot(
                range(1, len(curve) + 1),
                curve,
                marker="o",
                markersize=3,
                color=PALETTE[i % len(PALETTE)],
                label=f"{run['kind']} {str(run['run_id'])[:8]}",
            )
        ax.set_xlabel("logging step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)

    return _render("training", "Training loss", f"loss curves of {len(curves)} training runs", draw, (7, 3.2))


def reward_plot(rows: list[dict[str, Any]]) -> Figure | None:
    """Reward-model scores of the policy's answers before and after RL, per training run."""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.get("reward") is None or not math.isfinite(float(row["reward"])):
            continue
        groups.setdefault(str(row["training_run_id"])[:8], {}).setdefault(str(row["stage"]), []).append(
            float(row["reward"])
        )
    if not groups:
        return None
    labels: list[str] = []
    values: list[list[float]] = []
    for run, stages in groups.items():
        for stage in ("before", "after"):
            if stage in stages:
                labels.append(f"{run}\n{stage}")
                values.append(stages[stage])

    def draw(ax: Any) -> None:
        parts = ax.boxplot(values, tick_labels=labels, patch_artist=True)
        for i, box in enumerate(parts["boxes"]):
            box.set_facecolor(PALETTE[1] if labels[i].endswith("after") else PALETTE[5])
        ax.set_ylabel("reward-model score")

    return _render(
        "rewards", "Reward before and after RL", f"reward before/after for {len(groups)} runs", draw, (6, 3.2)
    )


def reliability_plot(points: list[tuple[float, float, int]]) -> Figure | None:
    """The paper's calibration picture (Fig. 9): predicted probability vs observed frequency."""
    if not points:
        return None

    def draw(ax: Any) -> None:
        xs = [p for p, _, _ in points]
        ys = [f for _, f, _ in points]
        sizes = [20 + 4 * n for _, _, n in points]
        ax.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="perfect calibration")
        ax.plot(xs, ys, color=PALETTE[0], linewidth=1)
        ax.scatter(xs, ys, s=sizes, color=PALETTE[0], zorder=3, label="evaluation")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability of the correct answer")
        ax.set_ylabel("frequency correct")
        ax.legend(fontsize=8)

    return _render(
        "reliability",
        "Calibration (reliability diagram)",
        f"reliability diagram, {len(points)} bins",
        draw,
        (4.5, 4.5),
    )
