"""The report's two charts as PNG bytes, each with the alt text that says what it shows in words.

    png, alt = epsilon_chart(rounds=[1, 2], per_round=[2.5, 2.5], cumulative=[12.5, 14.1], total=16.8, budget=30)
    png, alt = risk_chart(rounds)          # rounds: [(number, intensity, Figures)], the measured ones

matplotlib draws on its object-oriented API (a Figure and the Agg canvas, no pyplot): no global backend, safe in a
threaded server, and imported only when a report is written, so the coordinator starts without it.
"""

from __future__ import annotations

import io

from umbra.privacy.policy import ADVANTAGE, NAMES, REIDENTIFICATION, UTILITY, Figures, Policy, percent
from umbra.privacy.policy import epsilon_text

INK, GRID = "#1a1a1a", "#d0d0d0"
# Colour-blind-safe (Okabe-Ito); every series also has its own marker and line style, so none relies on colour.
SERIES = [("#0072b2", "o", "-"), ("#d55e00", "s", "--"), ("#009e73", "^", "-."), ("#cc79a7", "D", ":"),
          ("#e69f00", "v", "-"), ("#56b4e9", "P", "--")]


def _figure(width: float = 7.0, height: float = 3.4):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    axes = figure.add_subplot()
    axes.grid(True, color=GRID, linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return figure, axes


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def epsilon_chart(*, rounds: list[int], per_round: list[float], cumulative: list[float], total: float | None,
                  budget: float | None) -> tuple[bytes, str]:
    """Bars: each preview round's ε; line: the job's ε so far (previews composed, the generator once); the last
    point the release's total; a dashed line at the budget."""
    figure, axes = _figure()
    labels = [f"round {n}" for n in rounds] + (["with the release"] if total is not None else [])
    places = list(range(len(labels)))
    axes.bar(places[:len(rounds)], per_round, color="#9ecae1", edgecolor=INK, linewidth=0.6, hatch="//",
             label="ε of the round")
    line = cumulative + ([total] if total is not None else [])
    axes.plot(places, line, color="#08519c", marker="o", linewidth=2, label="ε of the job so far")
    highest = max(line + per_round + [1e-9])
    drawn = budget if budget and budget <= 4 * highest else None  # a budget far above would flatten every bar
    if drawn:
        axes.axhline(drawn, color="#a40e26", linestyle="--", linewidth=1.5, label=f"budget ε {drawn:g}")
    elif budget:
        axes.set_title(f"the budget, ε {budget:g}, is above the chart", fontsize=8, color="#a40e26")
    axes.set_xticks(places, labels, rotation=20 if len(labels) > 6 else 0)
    axes.set_ylabel("ε (lower is more private)")
    axes.set_ylim(0, max(highest, drawn or 0) * 1.15)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False, fontsize=8)
    steps = "; ".join(f"round {n}: {epsilon_text(e)} (job so far {epsilon_text(c)})"
                      for n, e, c in zip(rounds, per_round, cumulative, strict=True))
    alt = (f"Chart of ε per preview round and of the job's ε so far. {steps or 'No preview round'}"
           f"{f'; with the release: {epsilon_text(total)}' if total is not None else ''}"
           f"{f'; budget {budget:g}' if budget else ''}.")
    return _png(figure), alt


def _series(rounds: list[tuple[int, float, Figures]]) -> dict[str, list[tuple[float, float]]]:
    """(intensity, value) per figure, by the figure's plain name."""
    out: dict[str, list[tuple[float, float]]] = {}
    for _, intensity, figures in rounds:
        if figures.reidentification is not None:
            out.setdefault(NAMES[REIDENTIFICATION], []).append((intensity, figures.reidentification.value))
        for attribute, figure in figures.advantage.items():
            name = f"{NAMES[ADVANTAGE]}: {attribute.replace('_', ' ')}"
            out.setdefault(name, []).append((intensity, figure.value))
        for attribute, figure in figures.utility.items():
            out.setdefault(f"{NAMES[UTILITY]}: {attribute.replace('_', ' ')}", []).append((intensity, figure.value))
    return {name: sorted(points) for name, points in out.items()}


def risk_chart(rounds: list[tuple[int, float, Figures]], policy: Policy | None = None) -> tuple[bytes, str] | None:
    """Re-identification, each adversary's advantage and each kept utility against the rounds' intensity; None
    when no round was measured."""
    series = _series(rounds)
    if not series:
        return None
    figure, axes = _figure(height=3.8)
    for i, ((name, points), (colour, marker, style)) in enumerate(zip(series.items(), SERIES * 4, strict=False)):
        axes.plot([x for x, _ in points], [100 * y for _, y in points], color=colour, marker=marker,
                  markersize=max(11 - 2 * i, 5), linestyle=style, linewidth=1.8, label=name)  # overlaps stay visible
    if policy is not None and policy.max_reidentification is not None:
        axes.axhline(100 * policy.max_reidentification, color="#a40e26", linestyle=(0, (2, 2)), linewidth=1,
                     label=f"limit for re-identification ({percent(policy.max_reidentification)})")
    axes.set_xlabel("intensity (more privacy to the right)")
    axes.set_ylabel("%")
    axes.set_xlim(-0.03, 1.03)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    figure.set_size_inches(9.0, 3.8)
    words = "; ".join(f"{name}: " + ", ".join(f"{percent(y)} at {x:.2f}" for x, y in points)
                      for name, points in series.items())
    alt = f"Chart of risk and usefulness against intensity over {len(rounds)} measured rounds. {words}."
    return _png(figure), alt
