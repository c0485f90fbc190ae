"""Choosing the next preview intensity from a reviewer's answers (the protection job's feedback loop).

The reviewer sees a preview at an intensity in [0, 1] and answers "more privacy" (the intensity must rise),
"less privacy" (it must fall) or accepts. Each answer halves the interval the acceptable intensities can lie in,
and the next preview is shown at its middle (bisection):

    search = IntensitySearch(initial=0.5)
    intensity = search.first()              # 0.5
    intensity = search.answer(MORE)         # 0.75: the acceptable ones lie in (0.5, 1]
    intensity = search.answer(LESS)         # 0.625

A reviewer who accepts any intensity of an interval A of width w is shown one inside it after at most
2 + floor(log2(1 / w)) rounds (5 for w = 0.1), whatever A and the first intensity: every "more" was answered
below A and every "less" above it, so the interval the answers leave always contains A; it is at most 1 wide
after the first answer and halves with each further one, and once it is narrower than 2w its middle lies in A.
No intensity is shown twice: each new one is strictly inside the interval the earlier answers left, whose ends
are earlier intensities (or 0 and 1). When that interval is narrower than `resolution`, there is nothing new to
show, `answer` returns None, and the reviewer must accept one of the two intensities at its ends.

Flagging images as still recognisable is an answer of "more privacy".
"""

from __future__ import annotations

from dataclasses import dataclass, field

MORE = "more"
LESS = "less"
DEFAULT_INITIAL = 0.5
RESOLUTION = 1 / 256  # intensities closer than this look the same; the search stops below it


@dataclass
class IntensitySearch:
    initial: float = DEFAULT_INITIAL
    resolution: float = RESOLUTION
    low: float = 0.0  # every acceptable intensity is above `low` (or equals it when `low` is 0)...
    high: float = 1.0  # ...and below `high` (or equals it when `high` is 1)
    shown: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial <= 1.0:
            raise ValueError(f"initial intensity {self.initial!r} is not in [0, 1]")

    @classmethod
    def replay(cls, initial: float, answers: list[str], resolution: float = RESOLUTION) -> "IntensitySearch":
        """The search after `answers` to the intensities it showed (how a restarted job finds its place)."""
        search = cls(initial=initial, resolution=resolution)
        search.first()
        for answer in answers:
            if search.answer(answer) is None:
                break
        return search

    @property
    def current(self) -> float:
        return self.shown[-1]

    def first(self) -> float:
        if not self.shown:
            self.shown.append(self.initial)
        return self.shown[0]

    def answer(self, answer: str) -> float | None:
        """The next intensity to show after `answer` (MORE or LESS) to the current one; None when no new
        intensity is left between the answers given so far."""
        if answer not in (MORE, LESS):
            raise ValueError(f"answer {answer!r} is not {MORE!r} or {LESS!r}")
        current = self.current
        if answer == MORE:
            self.low = max(self.low, current)
        else:
            self.high = min(self.high, current)
        if self.high - self.low < self.resolution:
            return None  # (also past either end of the knob: "more" at 1, "less" at 0)
        nxt = (self.low + self.high) / 2
        if any(abs(nxt - s) < self.resolution / 2 for s in self.shown):
            return None
        self.shown.append(nxt)
        return nxt
