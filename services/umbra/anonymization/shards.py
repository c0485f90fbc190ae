"""How anonymizing a dataset version is cut into output shards (umbra.anonymization.dataset): the samples that
have a value for every protected and kept attribute, in manifest order, SHARD_SAMPLES to a shard. Torch-free, so
that the coordinator deals the shards to anonymizer replicas (umbra.services.coordinator.sharding) by the same rule
the anonymizer plans with, without importing torch.

    shard_count(reader.samples(), ["gender", "age"])    # how many shards the anonymizer will write
"""

from __future__ import annotations

from collections.abc import Iterable

from umbra.dataset import manifest as mf

BATCH = 64
BATCHES_PER_SHARD = 4
SHARD_SAMPLES = BATCH * BATCHES_PER_SHARD


def complete(sample: mf.Sample, needed: list[str]) -> bool:
    """Whether `sample` has a value for every one of `needed` (otherwise anonymizing leaves it out)."""
    return all(name in sample.labels for name in needed)


def shard_count(samples: Iterable[mf.Sample], attributes: Iterable[str]) -> int:
    """How many output shards anonymizing these source samples writes, protecting and keeping `attributes`
    (the names, protected and kept alike): the plan's rule, for a caller that splits the work before asking."""
    needed = list(attributes)
    return -(-sum(complete(s, needed) for s in samples) // SHARD_SAMPLES)
