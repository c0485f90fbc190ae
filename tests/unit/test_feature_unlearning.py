"""The unlearning updates against cases worked by hand: softmax regression, whose per-sample gradient
((p − y) ⊗ x) and Hessian (Jᵀ(diag p − ppᵀ)J) are known in closed form, so the first-order update and the
second-order update through LiSSA can be checked against an exact linear solve. And the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from umbra.feature_unlearning import updates
from umbra.feature_unlearning.updates import Lissa, Objective, Points, Settings
from umbra.feature_unlearning.verification import probe_balanced_accuracy

D = 3  # features


def softmax_regression(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    net = nn.Linear(D, 2).double()
    with torch.no_grad():
        net.weight.mul_(3)
    return net


def points(n: int, seed: int, spread: float = 1.0) -> Points:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * spread
    mirror = x + 0.1 * torch.randn(n, D, generator=g, dtype=torch.float64)  # a second view of each sample
    return Points((x, mirror), torch.randint(0, 2, (n,), generator=g))


def gradient_by_hand(net: nn.Linear, pts: Points) -> torch.Tensor:
    """Σᵢ meanᵥ ∇ CE: for the weights (p − y) ⊗ x, for the bias (p − y); flattened weight-then-bias."""
    total = torch.zeros(2 * D + 2, dtype=torch.float64)  # 2·D weights, 2 biases
    for view in pts.views:
        p = torch.softmax(view @ net.weight.detach().T + net.bias.detach(), dim=1)
        r = p - nn.functional.one_hot(pts.labels, 2).double()
        total += torch.cat([(r.T @ view).reshape(-1), r.sum(0)]) / len(pts.views)
    return total


def hessian_by_hand(net: nn.Linear, pts: Points) -> torch.Tensor:
    """The mean Hessian: per sample and view Jᵀ(diag p − ppᵀ)J, with J = ∂logits/∂θ = [I₂ ⊗ xᵀ, I₂]."""
    h = torch.zeros(2 * D + 2, 2 * D + 2, dtype=torch.float64)
    for view in pts.views:
        p = torch.softmax(view @ net.weight.detach().T + net.bias.detach(), dim=1)
        for xi, pi in zip(view, p, strict=True):
            j = torch.cat([torch.kron(torch.eye(2, dtype=torch.float64), xi.view(1, -1)),
                           torch.eye(2, dtype=torch.float64)], dim=1)
            h += j.T @ (torch.diag(pi) - torch.outer(pi, pi)) @ j
    return h / (len(pts) * len(pts.views))


def test_first_order_update_is_theta_minus_tau_times_the_gradient_difference():
    net = softmax_regression()
    originals, replacements, pool = points(5, 1), points(5, 2), points(40, 3)
    theta = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()]).clone()
    by_hand = gradient_by_hand(net, replacements) - gradient_by_hand(net, originals)
    update = updates.unlearn(Objective(net), originals=originals, replacements=replacements, pool=pool, kept=40,
                             settings=Settings("first_order", tau=0.01, max_loss_rise=10.0))
    assert torch.allclose(update.parameters, theta - 0.01 * by_hand, atol=1e-12)
    assert torch.allclose(torch.cat([net.weight.detach().reshape(-1), net.bias.detach()]), update.parameters)
    assert update.gradient_evaluations == 10 and update.tau == 0.01


def test_removal_uses_minus_the_removed_gradients():
    net = softmax_regression()
    removed, pool = points(4, 5), points(30, 6)
    empty = Points(tuple(v[:0] for v in removed.views), removed.labels[:0])
    theta = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()]).clone()
    by_hand = gradient_by_hand(net, removed)
    update = updates.unlearn(Objective(net), originals=removed, replacements=empty, pool=pool, kept=30,
                             settings=Settings("first_order", tau=0.02, max_loss_rise=10.0))
    assert torch.allclose(update.parameters, theta + 0.02 * by_hand, atol=1e-12)


def test_second_order_update_matches_the_exact_inverse_hessian():
    net = softmax_regression()
    originals, replacements, pool = points(6, 7), points(6, 8), points(50, 9)
    theta = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()]).clone()
    delta = gradient_by_hand(net, replacements) - gradient_by_hand(net, originals)
    damping, scale = 0.05, 4.0
    exact = torch.linalg.solve(hessian_by_hand(net, pool) + damping * scale * torch.eye(2 * D + 2,
                                                                                      dtype=torch.float64), delta)
    # batch = the whole pool: every Hessian-vector product is the exact mean Hessian's
    lissa = Lissa(damping=damping, scale=scale, depth=2000, patience=0, batch_size=50)
    update = updates.unlearn(Objective(net), originals=originals, replacements=replacements, pool=pool, kept=50,
                             settings=Settings("second_order", lissa=lissa, max_loss_rise=10.0))
    n = 50 + 6
    assert update.tau == pytest.approx(1 / n)  # the automatic tau: an influence-function (Newton) step
    assert torch.allclose(update.parameters, theta - exact / n, rtol=1e-5, atol=1e-7)
    assert update.scale == scale and 0 < update.iterations <= 2000


def test_automatic_second_order_tau_backtracks_until_the_revised_objective_does_not_rise():
    net = softmax_regression()
    originals, replacements, pool = points(6, 7), points(6, 8), points(50, 9)
    lissa = Lissa(damping=0.05, scale=4.0, depth=2000, patience=0, batch_size=50)
    full = updates.unlearn(Objective(softmax_regression()), originals=originals, replacements=replacements,
                           pool=pool, kept=50, settings=Settings("second_order", lissa=lissa, max_loss_rise=10.0))
    assert full.loss_after > full.loss_before * 1.01  # the full Newton step overshoots on this case
    update = updates.unlearn(Objective(net), originals=originals, replacements=replacements, pool=pool, kept=50,
                             settings=Settings("second_order", lissa=lissa))
    assert update.tau < full.tau and update.loss_after <= update.loss_before * 1.01
    assert (full.tau / update.tau) in {2.0 ** k for k in range(1, updates.BACKTRACKS + 1)}


def test_when_every_training_sample_changed_the_hessian_comes_from_the_originals():
    net = softmax_regression()
    originals, replacements = points(20, 14), points(20, 15)
    empty = Points(tuple(v[:0] for v in originals.views), originals.labels[:0])
    lissa = Lissa(damping=0.05, scale=4.0, depth=2000, patience=0, batch_size=20)
    theta = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()]).clone()
    delta = gradient_by_hand(net, replacements) - gradient_by_hand(net, originals)
    exact = torch.linalg.solve(hessian_by_hand(net, originals) + 0.2 * torch.eye(2 * D + 2, dtype=torch.float64),
                               delta)
    update = updates.unlearn(Objective(net), originals=originals, replacements=replacements, pool=empty, kept=0,
                             settings=Settings("second_order", tau=1 / 20, lissa=lissa, max_loss_rise=10.0))
    assert torch.allclose(update.parameters, theta - exact / 20, rtol=1e-5, atol=1e-7)
    assert update.loss_before == pytest.approx(Objective(softmax_regression()).loss_sum(replacements) / 20)


def test_automatic_scale_is_the_smallest_that_does_not_diverge():
    net = softmax_regression()
    pool = points(50, 10, spread=6.0)  # large inputs: the Hessian's top eigenvalue is far above 1
    top = float(torch.linalg.eigvalsh(hessian_by_hand(net, pool)).max())
    v = torch.randn(2 * D + 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = updates.lissa(Objective(net), pool, v, Lissa(damping=0.1, depth=3000, batch_size=50), seed=0)
    assert result.tried[0] == 1 and result.scale == result.tried[-1] > 1
    assert result.scale >= top / 2 > result.scale / 10  # smaller scales let (1 - d)I - H/s grow past 1
    exact = torch.linalg.solve(hessian_by_hand(net, pool) + 0.1 * result.scale * torch.eye(2 * D + 2,
                                                                                            dtype=torch.float64), v)
    assert torch.allclose(result.solution, exact, rtol=1e-5, atol=1e-8)


def test_a_diverging_lissa_scale_is_refused_with_the_measured_norm():
    net = softmax_regression()
    pool = points(50, 10, spread=6.0)
    v = torch.ones(2 * D + 2, dtype=torch.float64)
    with pytest.raises(updates.Diverged) as caught:
        updates.lissa(Objective(net), pool, v, Lissa(damping=0.1, scale=1.0, depth=500, batch_size=50), seed=0)
    assert caught.value.measured["scale"] == 1.0
    assert caught.value.measured["norm"] > caught.value.measured["bound"] or "grew" in str(caught.value)


def test_an_update_raising_the_loss_is_refused_and_leaves_the_model_unchanged():
    net = softmax_regression()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(updates.Diverged) as caught:
        updates.unlearn(Objective(net), originals=points(5, 1), replacements=points(5, 2), pool=points(40, 3),
                        kept=40, settings=Settings("first_order", tau=1e4))
    measured = caught.value.measured
    assert measured["loss_after"] > measured["loss_before"] and "raises the revised training loss" in str(caught.value)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_automatic_first_order_tau_never_raises_the_revised_objective():
    net = softmax_regression()
    update = updates.unlearn(Objective(net), originals=points(8, 11), replacements=points(8, 12),
                             pool=points(60, 13), kept=60, settings=Settings("first_order"))
    assert update.loss_after <= update.loss_before and update.tau >= 0


def test_probe_balanced_accuracy_reads_a_signal_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 8))
    assert probe_balanced_accuracy(x, y) == pytest.approx(0.5, abs=0.1)
    x[:, 0] += 3 * y
    assert probe_balanced_accuracy(x, y) > 0.9


def test_a_scatternets_inputs_are_its_stem_outputs_for_each_view():
    from umbra.classifiers.architectures import create
    from umbra.classifiers.data import LabelledImages
    from umbra.classifiers.model_config import ModelConfig
    from umbra.feature_unlearning.classifier import trainable

    model = create(ModelConfig("scatternet_cnn", 2, 32, classes=["0", "1"], width=8))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    data = LabelledImages(images, torch.tensor([0, 1, 0]), ["0", "1"], ["a", "b", "c"])
    objective, points = trainable(model)
    both = points(data)
    x = images.float() / 255
    with torch.no_grad():
        assert torch.allclose(both.views[0], model.stem(x), atol=1e-5)
        assert torch.allclose(both.views[1], model.stem(x.flip(-1)), atol=1e-5)
    one = points(data, seed=0)
    assert len(one.views) == 1 and one.views[0].shape == both.views[0].shape
    for i in range(3):  # each sample's one view is its image or its mirror image
        assert any(torch.allclose(one.views[0][i], v[i], atol=1e-5) for v in both.views)
    empty = points(data.take([False] * 3))
    assert empty.views[0].shape == (0, *both.views[0].shape[1:])
    assert objective.params == [p for p in model.trainable().parameters()]  # only what follows the stem
