"""The attributes a generator is conditioned on, and how a label value becomes a conditioning index.

A categorical attribute (gender, race) has the classes found in the training data; a numeric one (age) is
clipped to a fixed public range and conditioned on fixed public buckets, so that neither its range nor its
buckets depend on anyone's data (the clipped Laplace mechanism needs a public range). Every attribute has one
more index, `null`, meaning "not given": classifier-free guidance trains and samples with it.

    schema = schema_for({"gender": ["0", "1", "1"], "age": ["26", "3", "71"]}, ["gender", "age"])
    schema[1].index("26")    # 2: the bucket [20, 30)
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

from umbra.runtime.errors import InvalidInput

# Numeric attributes: ages in years. Public, fixed, and the same for every tenant.
NUMERIC_RANGE = (0.0, 100.0)
NUMERIC_EDGES = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)  # bucket i holds [edge[i-1], edge[i])
MIN_DISTINCT_NUMERIC = 12  # a column of numbers with more distinct values than this is numeric, not categorical


@dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]  # categorical: the classes; numeric: the bucket names
    numeric: bool = False

    @property
    def null(self) -> int:
        """The index meaning "not given" (classifier-free guidance)."""
        return len(self.values)

    def index(self, value: str) -> int:
        """The conditioning index of a label value; InvalidInput for a value the generator does not know."""
        if self.numeric:
            number = _number(value)
            if number is None:
                raise InvalidInput(self.name, f"{value!r} is not a number")
            return bisect.bisect_right(NUMERIC_EDGES, clip(number))
        try:
            return self.values.index(value)
        except ValueError:
            raise InvalidInput(self.name, f"{value!r} is not one of the generator's values "
                                          f"({', '.join(self.values)})") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values), "numeric": self.numeric}

    @classmethod
    def from_dict(cls, data: dict) -> "Attribute":
        return cls(data["name"], tuple(data["values"]), bool(data.get("numeric", False)))


def clip(number: float) -> float:
    low, high = NUMERIC_RANGE
    return min(max(number, low), high)


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _bucket_names() -> tuple[str, ...]:
    bounds = (NUMERIC_RANGE[0], *NUMERIC_EDGES, NUMERIC_RANGE[1])
    return tuple(f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(bounds))


def schema_for(columns: dict[str, list[str]], names: list[str], field: str = "condition_attributes"
               ) -> tuple[Attribute, ...]:
    """The attributes `names`, from the label values seen in `columns` (column -> values)."""
    if not names:
        raise InvalidInput(field, "name at least one attribute to condition on")
    if len(set(names)) != len(names):
        raise InvalidInput(field, "names an attribute twice")
    schema = []
    for name in names:
        if name not in columns:
            raise InvalidInput(field, f"{name!r} is not a column of the dataset (it has "
                                      f"{', '.join(sorted(columns)) or 'none'})")
        seen = sorted(set(columns[name]), key=lambda v: (len(v), v))
        numbers = [_number(v) for v in seen]
        if all(n is not None for n in numbers) and len(seen) > MIN_DISTINCT_NUMERIC:
            schema.append(Attribute(name, _bucket_names(), numeric=True))
        elif len(seen) < 2:
            raise InvalidInput(field, f"{name!r} has only the value {seen[0] if seen else 'none'!r} in the dataset")
        else:
            schema.append(Attribute(name, tuple(seen)))
    return tuple(schema)
