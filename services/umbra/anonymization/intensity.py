"""The one knob a user turns: intensity in [0, 1] -> how far each image is noised (the diffusion timestep), how
hard guidance pushes toward the released attributes, how much each protected attribute is randomized (ε_a),
and the denoising steps. Between the rows of TABLE every value is interpolated linearly (steps rounded).

The timestep and ε_a make the privacy; guidance and steps only shape the image (post-processing). The ε of the
image mechanism at each timestep is in the README's table, computed by `umbra.privacy.mechanisms`.

Each generator design has its own timestep column: the same timestep is a different amount of noise on a latent
of norm C = sqrt(latent_dim) (about one per coordinate, the scale the noise schedule was made for) than on
3·S² pixels, so each column is chosen for its own ε_x and images (docs/privacy.md has both columns' ε).

    plan_for(0.5)   # Plan(intensity=0.5, timestep=700, guidance=3.0, attribute_epsilon=1.0, steps=6,
                    #      kept_guidance=1.0)
    plan_for(0.5, design="pixel").timestep   # 500
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from umbra.diffusion.generator import DESIGNS
from umbra.runtime.errors import InvalidInput

# intensity, timestep (of 1000) for each of DESIGNS (latent, pixel), guidance scale, ε of each protected
# attribute, DDIM steps
TABLE: tuple[tuple[float, int, int, float, float, int], ...] = (
    (0.00, 500, 100, 1.0, 8.0, 4),
    (0.25, 600, 300, 2.0, 3.0, 5),
    (0.50, 700, 500, 3.0, 1.0, 6),
    (0.75, 800, 700, 4.0, 0.3, 8),
    (1.00, 900, 900, 5.0, 0.0, 10),
)
# Guidance toward the kept attributes (umbra.diffusion.sampling.regenerate), at every intensity: it brings back
# the kept attributes that the noise took. At the default, on one generator: the kept race's utility 0.48 at
# w_k 0, 0.73 at 1, 0.74 at 2, 0.61 at 3 (the figure is noisy), while quality falls as w_k grows (0.092, 0.092,
# 0.079, 0.065): 1 keeps the race and the most quality (docs/benchmarks.md).
KEPT_GUIDANCE = 1.0
DEFAULT_INTENSITY = 0.75
MAX_STEPS = 1000  # DDIM steps: the generator's whole chain (umbra.diffusion.sampling.schedule_for)


@dataclass(frozen=True)
class Plan:
    intensity: float
    timestep: int
    guidance: float
    attribute_epsilon: float
    steps: int
    kept_guidance: float = KEPT_GUIDANCE


def plan_for(intensity: float, steps: int = 0, field: str = "settings.intensity", design: str = "latent") -> Plan:
    """The table's settings at `intensity` for a generator of `design`; `steps` > 0 replaces the table's denoising
    steps."""
    if not (math.isfinite(intensity) and 0.0 <= intensity <= 1.0):
        raise InvalidInput(field, f"is {intensity}: must be between 0 and 1")
    if not 0 <= steps <= MAX_STEPS:
        raise InvalidInput("settings.steps", f"is {steps}: must be 1 to {MAX_STEPS} (0: the table's)")
    column = 1 + DESIGNS.index(design)
    if intensity == TABLE[-1][0]:
        row = TABLE[-1]
        return Plan(intensity, row[column], row[3], row[4], steps or row[5])
    for low, high in zip(TABLE, TABLE[1:], strict=False):
        if low[0] <= intensity < high[0]:  # a row's own intensity gets its values exactly
            w = (intensity - low[0]) / (high[0] - low[0])
            value = [a + w * (b - a) for a, b in zip(low, high, strict=True)]
            return Plan(intensity, round(value[column]), value[3], value[4], steps or round(value[5]))
    raise AssertionError("TABLE covers [0, 1]")
