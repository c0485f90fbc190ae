"""What the verification's leakage probe (umbra.feature_unlearning.verification) needs of a dataset version, checked
before any compute: a protected attribute other than the task, labelled on at least two test samples of each of two
values. Torch-free: the coordinator checks a protection job's request with it.

    check_probe(reader, task="smile", attribute="gender")    # InvalidInput naming the field at fault
"""

from __future__ import annotations

from umbra.runtime.errors import InvalidInput
from umbra.storage.datasets import DatasetReader


def check_probe(reader: DatasetReader, *, task: str, attribute: str) -> None:
    """Refuses, before any compute, a comparison whose probe cannot be scored on `reader`'s test split."""
    if not attribute:
        raise InvalidInput("probe_attribute", "is required with verify: the protected attribute the leakage probe "
                                              "predicts")
    if attribute == task:
        raise InvalidInput("probe_attribute", f"is the model's own task ({task!r}): name a protected attribute")
    if attribute not in reader.header.label_columns:
        raise InvalidInput("probe_attribute", f"{attribute!r} is not a label column of the original version (it "
                                              f"has {', '.join(reader.header.label_columns)})")
    values: dict[str, int] = {}
    for sample in reader.samples():
        if sample.split == "test" and task in sample.labels and attribute in sample.labels:
            values[sample.labels[attribute]] = values.get(sample.labels[attribute], 0) + 1
    if len(values) < 2 or min(values.values()) < 2:
        raise InvalidInput("verify", f"the original version's test split needs at least two samples of two values "
                                     f"of {attribute!r} labelled with {task!r} (it has {values or 'none'})")
