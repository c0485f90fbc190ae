"""MDP's feature matching on a small real extractor: starts of another class, pixels in range, the feature loss
driven down, the same result as the reference loop, and the extractor left as it was."""

import pytest
import torch

from umbra.classifiers.architectures import create
from umbra.classifiers.model_config import ModelConfig
from umbra.mdp.feature_matching import choose_starts, match_features, reference_match
from umbra.runtime.errors import Cancelled, InvalidInput


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return create(ModelConfig("groupnorm_cnn", 3, 32, width=8))


def test_starts_are_always_of_another_class_and_seeded():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0] * 20)
    starts = choose_starts(labels, torch.Generator().manual_seed(1))
    assert (labels[starts] != labels).all()
    assert torch.equal(starts, choose_starts(labels, torch.Generator().manual_seed(1)))
    assert len(set(starts.tolist())) > 50  # drawn, not a fixed partner
    with pytest.raises(InvalidInput, match="two classes"):
        choose_starts(torch.zeros(5, dtype=torch.long), torch.Generator())


def test_released_images_carry_the_originals_features(extractor):
    generator = torch.Generator().manual_seed(0)
    originals = torch.rand(8, 3, 32, 32, generator=generator)
    starts = torch.rand(8, 3, 32, 32, generator=generator)
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    extractor.train()
    released, loss = match_features(extractor, originals, starts, steps=30, step_size=0.1)
    assert extractor.training and all(p.requires_grad for p in extractor.parameters())  # left as it was
    with torch.no_grad():
        extractor.eval()
        start_loss = ((extractor.features(starts) - extractor.features(originals)) ** 2).flatten(1).mean(1)
    assert released.shape == originals.shape and released.min() >= 0 and released.max() <= 1
    assert (loss < 0.5 * start_loss).all()
    assert all(torch.equal(v, extractor.state_dict()[k]) for k, v in before.items())


def test_same_steps_as_the_reference_loop(extractor):
    generator = torch.Generator().manual_seed(3)
    originals, starts = torch.rand(4, 3, 32, 32, generator=generator), torch.rand(4, 3, 32, 32, generator=generator)
    ours, our_loss = match_features(extractor, originals, starts, steps=10)
    theirs, their_loss = reference_match(extractor, originals, starts, steps=10)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(our_loss, their_loss, rtol=1e-4, atol=1e-7)


def test_momentum_gets_further_in_the_same_steps(extractor):
    generator = torch.Generator().manual_seed(5)
    originals, starts = torch.rand(6, 3, 32, 32, generator=generator), torch.rand(6, 3, 32, 32, generator=generator)
    _, plain = match_features(extractor, originals, starts, steps=15)
    _, heavy = match_features(extractor, originals, starts, steps=15, momentum=0.9)
    assert heavy.mean() < plain.mean()
    with pytest.raises(InvalidInput, match="momentum"):
        match_features(extractor, originals, starts, steps=1, momentum=1.0)


def test_batches_are_independent_and_progress_is_reported(extractor):
    generator = torch.Generator().manual_seed(6)
    originals, starts = torch.rand(7, 3, 32, 32, generator=generator), torch.rand(7, 3, 32, 32, generator=generator)
    whole, whole_loss = match_features(extractor, originals, starts, steps=5, batch_size=7)
    seen = []
    parts, parts_loss = match_features(extractor, originals, starts, steps=5, batch_size=3,
                                       on_batch=lambda done, losses: seen.append((done, len(losses))))
    assert torch.allclose(whole, parts, atol=1e-5) and torch.allclose(whole_loss, parts_loss, rtol=1e-4, atol=1e-7)
    assert seen == [(3, 3), (6, 3), (7, 1)]
    with pytest.raises(Cancelled):
        match_features(extractor, originals, starts, steps=5, batch_size=3, cancelled=lambda: True)


def test_single_views_even_for_a_mirror_averaging_extractor():
    torch.manual_seed(1)
    model = create(ModelConfig("groupnorm_cnn", 2, 32, width=8, mirror_average=True))
    generator = torch.Generator().manual_seed(7)
    originals, starts = torch.rand(3, 3, 32, 32, generator=generator), torch.rand(3, 3, 32, 32, generator=generator)
    released, loss = match_features(model, originals, starts, steps=3)
    assert model.mirror_average  # put back
    model.eval()
    with torch.no_grad():
        single = ((model._features(released) - model._features(originals)) ** 2).flatten(1).mean(1)
    assert torch.allclose(loss, single, rtol=1e-5)
