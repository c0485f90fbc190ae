"""Classifier training on two gloo processes (umbra.classifiers.distributed): DP-SGD spends exactly the epsilon of
one process (the accountant sees the same sample rate, noise multiplier and steps), reaches a comparable accuracy,
and every rank holds the same weights, which are the ones kept; the per-rank Poisson sampler; bad `processes`."""

from __future__ import annotations

import pytest
import torch

from umbra.classifiers import distributed, loop
from umbra.classifiers.architectures import create
from umbra.classifiers.data import LabelledImages
from umbra.classifiers.model_config import ModelConfig
from umbra.privacy.dp_sgd import DPSettings, EveryStepPoissonSampler, World, poisson_rate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
HYPER = loop.Hyperparameters(epochs=3, batch_size=32, physical_batch_size=16, learning_rate=5e-3)
DP = DPSettings(target_delta=1e-3, noise_multiplier=0.8, accountant="rdp")  # no calibration: a quick test


def faces(n: int = 192, seed: int = 0) -> LabelledImages:
    """Noise images whose class shows as a bright left half: learnable in a few DP epochs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = (torch.rand(n, 3, 32, 32, generator=g) * 100).to(torch.uint8)
    images[labels == 1, :, :, :16] += 120
    return LabelledImages(images, labels, ["0", "1"], [f"f{i}" for i in range(n)])


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return create(ModelConfig("groupnorm_cnn", 2, 32, classes=["0", "1"], width=8))


def accuracy(model: torch.nn.Module, data: LabelledImages) -> float:
    return float((loop.predict(model, data) == data.labels).float().mean())


def test_two_processes_spend_the_epsilon_of_one_with_identical_ranks():
    data, test = faces(), faces(seed=1)
    one = network()
    alone = loop.train(model=one, data=data, hyper=HYPER, dp=DP, seed=0)
    two = network()
    outcome = distributed.train(model=two, data=data, inputs=None, hyper=HYPER, dp=DP, seed=0, on_epoch=None,
                                resume=None, should_stop=lambda: False, processes=2)
    together = outcome.result
    # The accountant saw the same q, sigma and steps: the very same epsilon, not an approximation of it.
    assert together.steps == alone.steps == HYPER.epochs * round(1 / poisson_rate(len(data), HYPER.batch_size))
    assert together.noise_multiplier == alone.noise_multiplier == DP.noise_multiplier
    assert together.epsilon == alone.epsilon and together.accountant == alone.accountant == "rdp"
    # Every rank ended with the same weights (checked after every epoch too), and the model kept is rank 0's.
    assert len(outcome.digests) == 2 and len(set(outcome.digests)) == 1
    assert distributed.weights_digest(two) == outcome.digests[0]
    a1, a2 = accuracy(one, test), accuracy(two, test)
    assert a1 > 0.75 and a2 > 0.75 and abs(a1 - a2) < 0.15, (a1, a2)


def test_two_processes_without_dp_keep_identical_ranks():
    data = faces()
    model = network()
    outcome = distributed.train(model=model, data=data, inputs=None, hyper=HYPER, dp=None, seed=0, on_epoch=None,
                                resume=None, should_stop=lambda: False, processes=2)
    assert outcome.result.epsilon == 0 and len(set(outcome.digests)) == 1
    assert accuracy(model, faces(seed=1)) > 0.75


def test_each_rank_samples_its_own_chunk_at_the_one_process_rate_and_never_skips_a_step():
    n, q, steps = 101, 0.05, 400
    chunks = []
    for rank in range(2):
        sampler = EveryStepPoissonSampler(total_size=n, sample_rate=q, steps=steps, world=World(rank, 2),
                                          generator=torch.Generator().manual_seed(rank + 10))
        batches = list(sampler)
        assert len(batches) == len(sampler) == steps  # empty batches included: the ranks step together
        assert any(len(b) == 0 for b in batches)
        seen = {i for b in batches for i in b}
        chunks.append(seen)
        drawn = sum(len(b) for b in batches) / (steps * sampler.num_samples)
        assert abs(drawn - q) < 0.02  # each sample drawn at the one-process rate
    assert not chunks[0] & chunks[1] and len(chunks[0] | chunks[1]) == n  # disjoint chunks covering the dataset


@pytest.mark.parametrize("processes", [-1, 3, 1000])
def test_processes_beyond_the_worker_setting_are_refused_by_field(processes, tmp_path):
    from support import commit_faces
    from umbra.classifiers import job
    from umbra.classifiers.registry import ModelRegistry
    from umbra.runtime.errors import InvalidInput
    from umbra.storage.local import LocalObjectStore

    store = LocalObjectStore(tmp_path)
    store.ensure_bucket("umbra-acme")
    reader = commit_faces(store, "umbra-acme", 40, size=32)
    with pytest.raises(InvalidInput) as refused:
        job.plan(ModelRegistry(store), "umbra-acme", model="m", reader=reader, task="smile", split="train",
                 architecture="groupnorm_cnn", hyper=loop.Hyperparameters(epochs=1, batch_size=8), image_size=0,
                 width=0, dp=None, seed=0, start=None, revised=None, processes=processes, max_processes=2)
    assert refused.value.field == "processes"


def test_a_resumed_two_process_run_ends_exactly_where_an_uninterrupted_one_does():
    """From the epoch-1 checkpoint (every rank's data RNG, the noise RNG, the accountant), for a ScatterNet, whose
    fixed stem the worker computes and whose trainable part alone the ranks train."""
    data = faces(128)
    config = ModelConfig("scatternet_linear", 2, 32, classes=["0", "1"], width=32)
    hyper = loop.Hyperparameters(epochs=2, batch_size=32, physical_batch_size=32, learning_rate=1.0, optimizer="sgd")
    saved = []
    torch.manual_seed(0)
    whole = create(config)
    uninterrupted = loop.train(model=whole, data=data, hyper=hyper, dp=DP, seed=0, processes=2,
                               on_epoch=lambda report, checkpoint: saved.append(checkpoint))
    assert len(saved[0].rank_rngs) == 2 and saved[0].noise_rng is not None
    assert set(saved[0].model) == set(whole.state_dict())  # the whole network's checkpoint, stem included
    torch.manual_seed(0)
    resumed_model = create(config)
    resumed = loop.train(model=resumed_model, data=data, hyper=hyper, dp=DP, seed=0, processes=2, resume=saved[0])
    assert resumed == uninterrupted  # the same steps, epsilon and final loss
    assert distributed.weights_digest(resumed_model) == distributed.weights_digest(whole)
