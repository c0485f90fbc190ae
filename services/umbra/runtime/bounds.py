"""Range checks of numeric request fields, run before any work: a value outside its documented range (NaN and
infinities included) is refused with InvalidInput naming the field. The ranges themselves are named constants
beside the code that uses the values; only the seed's range, the same for every service, is here.

    epochs = bounds.integer(h.epochs, "hyperparameters.epochs", 1, MAX_EPOCHS)
    rate = bounds.number(h.learning_rate, "hyperparameters.learning_rate", 0, MAX_LEARNING_RATE, open_low=True)
    seed = bounds.seed(request.seed)
"""

from __future__ import annotations

import math

from umbra.runtime.errors import InvalidInput

MAX_SEED = 2**32 - 1  # what every RNG the services seed takes as is (numpy's included)


def integer(value: int, field: str, low: int, high: int, *, zero_is_default: bool = False) -> int:
    """`value` if low <= value <= high (or 0 where 0 means the default), else InvalidInput naming `field`."""
    if zero_is_default and value == 0:
        return value
    if not low <= value <= high:
        raise InvalidInput(field, f"is {value}: must be {low} to {high}" + (" (0: the default)" if zero_is_default
                                                                            else ""))
    return value


def number(value: float, field: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False,
           zero_is_default: bool = False) -> float:
    """`value` if finite and in the range (`open_low`/`open_high` leave an end out), else InvalidInput."""
    if zero_is_default and value == 0:
        return value
    inside = (math.isfinite(value) and (low < value if open_low else low <= value)
              and (value < high if open_high else value <= high))
    if not inside:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise InvalidInput(field, f"is {value}: must be a finite number in {interval}"
                                  + (" (0: the default)" if zero_is_default else ""))
    return value


def seed(value: int, field: str = "seed") -> int:
    return integer(value, field, 0, MAX_SEED)
