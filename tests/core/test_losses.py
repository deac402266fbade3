"""Every registered loss: finite scalar, gradients reach the scores, hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from ranksweep.core.losses import LOSSES, WeightedLoss, kl, lce, listnet, margin_mse, ranknet


def _scores(seed: int, b: int = 4, g: int = 6, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, g, generator=gen, dtype=dtype), torch.randn(b, g, generator=gen, dtype=dtype) * 3


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_a_finite_scalar_with_gradient(name):
    s, t = _scores(0)
    s.requires_grad_(True)
    out = LOSSES[name](s, t, 2.0)
    assert out.shape == ()
    assert torch.isfinite(out)
    out.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck(name):
    s, t = _scores(1, b=2, g=4)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: LOSSES[name](x, t, 1.5), (s,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(n for n in LOSSES if LOSSES[n].needs_teacher or n == "ranknet"))
def test_temperature_is_honoured_by_teacher_losses(name):
    s, t = _scores(2)
    assert not torch.isclose(LOSSES[name](s, t, 0.5), LOSSES[name](s, t, 4.0))


def test_lce_ignores_teacher_and_temperature():
    s, t = _scores(3)
    assert torch.equal(lce(s, None, 1.0), lce(s, t, 7.0))


def test_lce_by_hand():
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    row0 = -(2 - math.log(math.exp(2) + 2))
    row1 = -(0 - math.log(1 + math.e + math.exp(-1)))
    assert lce(s).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_kl_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    p = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax([0, 1])
    q = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax([0.5, 0])
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kl(s, t, T).item() == pytest.approx(expected, rel=1e-6)


def test_listnet_by_hand():
    s = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    t = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert listnet(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_margin_mse_by_hand():
    s = torch.tensor([[3.0, 1.0, 2.0]])  # margins 2, 1
    t = torch.tensor([[4.0, 0.0, 2.0]])  # margins 4, 2 -> /T=2: 2, 1
    assert margin_mse(s, t, 1.0).item() == pytest.approx(((2 - 4) ** 2 + (1 - 2) ** 2) / 2)
    assert margin_mse(s, t, 2.0).item() == pytest.approx(0.0)


def test_ranknet_by_hand():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    s = torch.tensor([[1.0, 0.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 2.0]])
    # pairs (0,1), (0,2), (1,2): student diffs 1, 0.5, -0.5; teacher diffs 2, 0, -2
    bce = lambda z, y: -(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z)))  # noqa: E731
    soft = [bce(1, sig(2 / 2)), bce(0.5, 0.5), bce(-0.5, sig(-2 / 2))]
    hard = [bce(1, 1), bce(0.5, 0.5), bce(-0.5, 0)]
    assert ranknet(s, t, 2.0, mode="soft").item() == pytest.approx(sum(soft) / 3, rel=1e-6)
    assert ranknet(s, t, 2.0, mode="hard").item() == pytest.approx(sum(hard) / 3, rel=1e-6)
    # without a teacher: positive against each negative, target 1
    assert ranknet(s, None).item() == pytest.approx((bce(1, 1) + bce(0.5, 1)) / 2, rel=1e-6)


def test_shape_errors_say_what_to_do():
    with pytest.raises(ValueError, match=r"\(B, G\).*got \(6,\)"):
        kl(torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match="teacher scores must have the student's shape"):
        kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="needs teacher scores"):
        margin_mse(torch.zeros(2, 3), None)


def test_unknown_loss_suggests_the_closest_name():
    with pytest.raises(KeyError, match="unknown loss 'margn_mse'; did you mean 'margin_mse'"):
        LOSSES["margn_mse"]


def test_weighted_loss_rejects_unknown_params_and_carries_citation():
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['sharpness'\]"):
        WeightedLoss("kl", params={"sharpness": 2})
    term = WeightedLoss("ranknet", 0.5, {"mode": "hard"})
    s, t = _scores(4)
    assert term(s, t, 1.0).item() == pytest.approx(ranknet(s, t, mode="hard").item())
    assert "@inproceedings" in term.citation
