"""A release policy: the largest risks and the smallest utility a protected dataset may be released with, and the
judgement of measured figures against it.

    policy = Policy.from_dict({"max_reidentification": 0.05, "max_adversary_advantage": {"gender": 0.1},
                               "min_kept_utility": {"skin_tone": 0.8}, "max_epsilon": 20})
    policy.validate(protected=["gender"], kept=["skin_tone"])      # InvalidInput naming the field
    criteria = judge(policy, figures)                             # one Criterion per limit, met or missed
    decide(criteria)                                              # "accept", "more" or "less"

The figures (`Figures`) are measured on a number of faces, and every proportion comes with an exact 95% interval
from that number (Clopper-Pearson): 0 of 60 faces re-identified is "0% (at most 4.9%)", not a proof of none. A
criterion is judged on the estimate (`met`); `certain` says whether the whole interval is on the right side of
the limit too, so a reader sees which verdicts a larger sample could overturn.

`decide` is how an automatic review answers a round: more privacy while a risk (re-identification, an adversary's
advantage, ε) is over its limit, less privacy while a kept utility is under its limit, accept when every criterion
holds. Risks come first: a round that misses both asks for more privacy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from scipy.special import betaincinv

from umbra.runtime.errors import InvalidInput

CONFIDENCE = 0.95
REIDENTIFICATION, ADVANTAGE, UTILITY, EPSILON = "reidentification", "adversary_advantage", "kept_utility", "epsilon"
AT_MOST, AT_LEAST = "at most", "at least"
# Plain-language names and what each figure means, for the page, the CLI and the report.
NAMES = {
    REIDENTIFICATION: "Re-identification",
    ADVANTAGE: "Attribute guessed beyond chance",
    UTILITY: "Usefulness kept",
    EPSILON: "Privacy loss (ε)",
}
MEANINGS = {
    REIDENTIFICATION: "The share of released faces that a face recognizer matches to the right person among the "
                      "originals. Lower is more private.",
    ADVANTAGE: "How much better than a coin toss an attacker, trained on the released faces, guesses the hidden "
               "attribute of a person. 0 means no better than chance.",
    UTILITY: "How well a model trained on the released faces still tells this attribute, as a share of how well "
             "one trained on the originals does. 100% means nothing was lost.",
    EPSILON: "The differential-privacy guarantee for a person in the dataset, over the whole job (every preview, "
             "the release and the generator's training). Lower is stronger; the budget caps it.",
}


def interval(successes: float, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a proportion; `successes` is rounded to a count. With none
    or all of the trials, the open side is one-sided at `confidence` (0 of 60 gives (0, 0.0487))."""
    if trials <= 0:
        return 0.0, 1.0
    k = min(max(round(successes), 0), trials)
    if k == 0:
        return 0.0, float(betaincinv(1, trials, confidence))
    if k == trials:
        return float(betaincinv(trials, 1, 1 - confidence)), 1.0
    tail = (1 - confidence) / 2
    return float(betaincinv(k, trials - k + 1, tail)), float(betaincinv(k + 1, trials - k, 1 - tail))


def percent(value: float) -> str:
    """A share as a person reads it: whole percents, one decimal below 10% (never rounded to a clean 0)."""
    value *= 100
    if value == 0:
        return "0%"
    if abs(value) < 10:
        text = f"{value:.1f}"
        return f"{'<0.1' if text in ('0.0', '-0.0') else text.removesuffix('.0')}%"
    return f"{value:.0f}%"


def epsilon_text(epsilon: float, *, up: bool = True) -> str:
    """ε as a guarantee is shown: 2 decimals, rounded up from the float's exact value (never a stronger guarantee
    than the one that holds); `up=False` rounds down, for what is left of a budget."""
    if not math.isfinite(epsilon):
        return "unbounded" if epsilon > 0 else "not measured"
    rounding = ROUND_CEILING if up else ROUND_FLOOR
    return f"{Decimal(epsilon).quantize(Decimal('0.01'), rounding=rounding):.2f}"


def share_text(value: float, faces: int) -> str:
    """A share measured on `faces` faces, with its 95% interval: "0% (at most 4.9%)", "33% (0.8% to 91%)"."""
    if faces <= 0:
        return percent(value)
    low, high = interval(value * faces, faces)
    if low <= 0 < high and value <= 0:
        return f"{percent(value)} (at most {percent(high)})"
    return f"{percent(value)} ({percent(low)} to {percent(high)})"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Figure:
    """A measured figure: a proportion over `faces` faces (its interval follows from them), or ε (faces 0)."""

    value: float
    faces: int = 0
    chance: float = 0.0  # for an adversary: the proportion a coin toss reaches, subtracted from the interval
    base: float = 1.0  # for a utility ratio: the originals' accuracy it is divided by

    def bounds(self) -> tuple[float, float] | None:
        if self.faces <= 0:
            return None
        low, high = interval((self.value * self.base + self.chance) * self.faces, self.faces)
        return (low - self.chance) / self.base, (high - self.chance) / self.base


@dataclass(frozen=True)
class Figures:
    """What a round (or a release) measured: re-identification, each protected attribute's adversary advantage
    over chance, each kept attribute's utility ratio, and the job's ε were it released at this intensity."""

    reidentification: Figure | None = None
    advantage: dict[str, Figure] = field(default_factory=dict)
    utility: dict[str, Figure] = field(default_factory=dict)
    epsilon: float | None = None

    @classmethod
    def of_round(cls, risk: dict[str, float], faces: int, epsilon: float | None) -> "Figures":
        """From a preview round's risk (MeasureRisk's metrics) on its `faces` released faces."""
        advantage = {name.removesuffix("_classifier_agreement"):
                     Figure(value - risk.get(name.replace("agreement", "chance"), 0.0), faces,
                            chance=risk.get(name.replace("agreement", "chance"), 0.0))
                     for name, value in risk.items() if name.endswith("_classifier_agreement")}
        utility = {name.removesuffix("_kept_utility"):
                   Figure(value, faces, base=risk.get(name.replace("_utility", "_original"), 1.0) or 1.0)
                   for name, value in risk.items() if name.endswith("_kept_utility")}
        reid = Figure(risk["reid_rank1"], faces) if "reid_rank1" in risk else None
        return cls(reid, advantage, utility, epsilon)

    @classmethod
    def of_release(cls, evaluation: dict[str, float], epsilon: float | None) -> "Figures":
        """From the release's evaluation (EvaluateRelease's metrics): re-identification on `reid_faces` faces, a
        retrained adversary and the kept utility on the test split (as many faces)."""
        faces = int(evaluation.get("reid_faces", 0))
        advantage = {name.removeprefix("adversary_").removesuffix("_bacc"):
                     Figure(value - evaluation.get(name.replace("_bacc", "_chance"), 0.0), faces,
                            chance=evaluation.get(name.replace("_bacc", "_chance"), 0.0))
                     for name, value in evaluation.items() if name.startswith("adversary_") and name.endswith("_bacc")}
        utility = {}
        for name, value in evaluation.items():
            if name.startswith("kept_") and name.endswith("_utility_ratio"):
                attribute = name.removeprefix("kept_").removesuffix("_utility_ratio")
                base = evaluation.get(f"kept_{attribute}_bacc_trained_on_originals", 1.0) or 1.0
                utility[attribute] = Figure(value, faces, base=base)
        reid = Figure(evaluation["reid_rank1"], faces) if "reid_rank1" in evaluation else None
        return cls(reid, advantage, utility, epsilon)


@dataclass(frozen=True)
class Criterion:
    """One limit of a policy judged on its figure."""

    name: str  # REIDENTIFICATION, ADVANTAGE, UTILITY or EPSILON
    attribute: str
    value: float | None  # None: the figure was not measured (the criterion is missed)
    limit: float
    faces: int
    bounds: tuple[float, float] | None

    @property
    def comparison(self) -> str:
        return AT_LEAST if self.name == UTILITY else AT_MOST

    @property
    def met(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.limit if self.name == UTILITY else self.value <= self.limit

    @property
    def certain(self) -> bool:
        """Met or missed with the whole 95% interval on the same side of the limit (ε has no interval)."""
        if self.bounds is None or self.value is None:
            return True
        low, high = self.bounds
        inside = (low >= self.limit) if self.name == UTILITY else (high <= self.limit)
        outside = (high < self.limit) if self.name == UTILITY else (low > self.limit)
        return inside if self.met else outside

    @property
    def risk(self) -> bool:
        return self.name != UTILITY

    @property
    def title(self) -> str:
        return f"{NAMES[self.name]}: {self.attribute.replace('_', ' ')}" if self.attribute else NAMES[self.name]

    def show(self, value: float) -> str:
        return epsilon_text(value) if self.name == EPSILON else percent(value)

    def figure_text(self) -> str:
        """The figure in words, with its interval: "0% (at most 4.9%)", "12% (4%–25%)", "ε 7.28"."""
        if self.value is None:
            return "not measured"
        if self.name == EPSILON:
            return epsilon_text(self.value)
        text = self.show(self.value)
        if self.bounds is None:
            return text
        low, high = self.bounds
        if low <= 0 < high and self.value <= 0:
            return f"{text} (at most {self.show(high)})"
        return f"{text} ({self.show(max(low, -1.0))} to {self.show(high)})"

    def to_dict(self) -> dict:
        """For JSON (the report, a round's record): every field (a figure not measured: None), and the words."""
        low, high = self.bounds if self.bounds is not None else (None, None)
        return {"name": self.name, "attribute": self.attribute, "title": self.title, "value": _finite(self.value),
                "low": _finite(low), "high": _finite(high), "limit": float(self.limit),
                "comparison": self.comparison, "faces": int(self.faces), "met": self.met, "certain": self.certain,
                "figure": self.figure_text(), "summary": self.summary}

    @property
    def summary(self) -> str:
        state = "met" if self.met else "missed"
        if not self.certain:
            state += ", but the 95% interval crosses the limit"
        faces = f", {self.faces} faces" if self.faces else ""
        return (f"{self.title} {self.figure_text()}{faces}; limit {self.comparison} {self.show(self.limit)}: "
                f"{state}")


@dataclass(frozen=True)
class Policy:
    max_reidentification: float | None = None
    max_adversary_advantage: dict[str, float] = field(default_factory=dict)
    min_kept_utility: dict[str, float] = field(default_factory=dict)
    max_epsilon: float | None = None

    FIELDS = ("max_reidentification", "max_adversary_advantage", "min_kept_utility", "max_epsilon")

    @property
    def empty(self) -> bool:
        return (self.max_reidentification is None and not self.max_adversary_advantage
                and not self.min_kept_utility and self.max_epsilon is None)

    @classmethod
    def from_dict(cls, data: dict, field_prefix: str = "policy") -> "Policy":
        """From a mapping (a YAML or JSON file's content). Unknown keys are refused by name."""
        if not isinstance(data, dict):
            raise InvalidInput(field_prefix, "must be a mapping of limits")
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise InvalidInput(f"{field_prefix}.{unknown[0]}",
                               f"is not a policy field (fields: {', '.join(cls.FIELDS)})")

        def number(value, name: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInput(f"{field_prefix}.{name}", f"must be a number, not {value!r}")
            return float(value)

        def mapping(name: str) -> dict[str, float]:
            value = data.get(name) or {}
            if not isinstance(value, dict):
                raise InvalidInput(f"{field_prefix}.{name}", "must map attribute names to limits")
            return {str(k): number(v, f"{name}.{k}") for k, v in value.items()}

        optional = {name: (number(data[name], name) if data.get(name) is not None else None)
                    for name in ("max_reidentification", "max_epsilon")}
        return cls(max_adversary_advantage=mapping("max_adversary_advantage"),
                   min_kept_utility=mapping("min_kept_utility"), **optional)

    def to_dict(self) -> dict:
        out: dict = {}
        if self.max_reidentification is not None:
            out["max_reidentification"] = self.max_reidentification
        if self.max_adversary_advantage:
            out["max_adversary_advantage"] = dict(self.max_adversary_advantage)
        if self.min_kept_utility:
            out["min_kept_utility"] = dict(self.min_kept_utility)
        if self.max_epsilon is not None:
            out["max_epsilon"] = self.max_epsilon
        return out

    def validate(self, protected: list[str], kept: list[str], field_prefix: str = "spec.policy") -> None:
        """Refuses, by field, a limit outside its range or about an attribute the job does not protect or keep."""
        def share(value: float, name: str) -> None:
            if not (0.0 <= value <= 1.0) or math.isnan(value):
                raise InvalidInput(f"{field_prefix}.{name}", f"{value!r} is not a share in [0, 1]")

        if self.max_reidentification is not None:
            share(self.max_reidentification, "max_reidentification")
        for attribute, limit in self.max_adversary_advantage.items():
            if attribute not in protected:
                raise InvalidInput(f"{field_prefix}.max_adversary_advantage[{attribute}]",
                                   f"{attribute!r} is not a protected attribute of the job ({', '.join(protected)})")
            share(limit, f"max_adversary_advantage[{attribute}]")
        for attribute, limit in self.min_kept_utility.items():
            if attribute not in kept:
                raise InvalidInput(f"{field_prefix}.min_kept_utility[{attribute}]",
                                   f"{attribute!r} is not a kept attribute of the job ({', '.join(kept) or 'none'})")
            share(limit, f"min_kept_utility[{attribute}]")
        if self.max_epsilon is not None and not (self.max_epsilon > 0 and math.isfinite(self.max_epsilon)):
            raise InvalidInput(f"{field_prefix}.max_epsilon", f"{self.max_epsilon!r} is not a positive number")


def judge(policy: Policy, figures: Figures) -> list[Criterion]:
    """Every limit of `policy` judged on `figures`, in the policy's order (a figure not measured is missed)."""
    def criterion(name: str, attribute: str, limit: float, figure: Figure | None) -> Criterion:
        if figure is None:
            return Criterion(name, attribute, None, limit, 0, None)
        return Criterion(name, attribute, figure.value, limit, figure.faces, figure.bounds())

    out = []
    if policy.max_reidentification is not None:
        out.append(criterion(REIDENTIFICATION, "", policy.max_reidentification, figures.reidentification))
    out += [criterion(ADVANTAGE, a, limit, figures.advantage.get(a))
            for a, limit in policy.max_adversary_advantage.items()]
    out += [criterion(UTILITY, a, limit, figures.utility.get(a)) for a, limit in policy.min_kept_utility.items()]
    if policy.max_epsilon is not None:
        out.append(Criterion(EPSILON, "", figures.epsilon, policy.max_epsilon, 0, None))
    return out


def decide(criteria: list[Criterion]) -> str:
    """An automatic review's answer: "more" while a risk misses its limit, "less" while a utility does, else
    "accept"."""
    if any(c.risk and not c.met for c in criteria):
        return "more"
    if any(not c.met for c in criteria):
        return "less"
    return "accept"
