"""Radial Embedding math on cases computed by hand (2-D vectors, angles from elementary geometry)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiercaps_gen.geometry import exterior_angle, hierarchy_angles, root_distance
from hiercaps_gen.re_loss import entailment_loss, hardest_pair_loss, pull_back_loss, re_loss

T = torch.tensor
CLAMP_ATOL = 2e-3  # arccos is clamped at 1 - 1e-6, so a true 0 reads as ~1.4e-3


def test_root_distance_is_distance_to_root() -> None:
    root = T([0.0, 1.0])
    e = T([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert torch.allclose(root_distance(e, root), T([math.sqrt(2), 0.0, 2.0]))


@pytest.mark.parametrize(
    ("root", "e", "child", "expected"),
    [
        ([0, 0], [1, 0], [2, 0], 0.0),  # straight on, away from the root
        ([0, 0], [1, 0], [1, 1], math.pi / 2),  # sideways
        ([0, 0], [1, 0], [2, 1], math.pi / 4),
        ([0, 0], [1, 0], [0, 0], math.pi),  # back to the root
        ([1, 0], [0, 1], [-1, 2], 0.0),  # root off the origin: e - r = (-1, 1) = e' - e
        ([0, 0], [1, 0], [1, 0], math.pi / 2),  # e' == e: zero vector, cosine taken as 0
    ],
)
def test_exterior_angle_hand_cases(root: list, e: list, child: list, expected: float) -> None:
    angle = exterior_angle(T(e, dtype=torch.float32), T(child, dtype=torch.float32), T(root, dtype=torch.float32))
    assert angle.item() == pytest.approx(expected, abs=CLAMP_ATOL)


def _bent_chain() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float], list[float]]:
    """One hierarchy in 2-D, root at the origin, with its angles worked out by hand.

    p: (1,0) -> (2,0) -> (3,1) -> (3,2); Ξ(p1,p2) = 0, Ξ(p2,p3) = angle((2,0),(1,1)) = π/4,
    Ξ(p3,p4) = angle((3,1),(0,1)) = acos(1/√10).
    n: n1 = p1 + (0,1): angle((1,0),(0,1)) = π/2; n2 = p2 + (-1,0): angle((2,0),(-1,0)) = π;
    n3 = p3 + (-1,-1): angle((3,1),(-1,-1)) = acos(-4/√20).
    """
    pos = T([[[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [3.0, 2.0]]])
    neg = T([[[1.0, 1.0], [1.0, 0.0], [2.0, 0.0]]])
    positive = [0.0, math.pi / 4, math.acos(1 / math.sqrt(10))]
    negative = [math.pi / 2, math.pi, math.acos(-4 / math.sqrt(20))]
    return pos, neg, torch.zeros(2), positive, negative


def test_hierarchy_angles_hand_case() -> None:
    pos, neg, root, positive, negative = _bent_chain()
    p, n = hierarchy_angles(pos, neg, root)
    assert p.shape == n.shape == (1, 3)
    assert torch.allclose(p[0], T(positive), atol=CLAMP_ATOL)
    assert torch.allclose(n[0], T(negative), atol=CLAMP_ATOL)


def test_hierarchy_angles_ignore_fourth_negative() -> None:
    pos, neg, root, _, _ = _bent_chain()
    with_n4 = torch.cat([neg, T([[[9.0, -9.0]]])], dim=1)
    assert torch.equal(hierarchy_angles(pos, neg, root)[1], hierarchy_angles(pos, with_n4, root)[1])


def test_entailment_loss_is_mean_positive_minus_mean_negative() -> None:
    assert entailment_loss(T([[0.1, 0.2, 0.3]]), T([[1.0, 2.0, 3.0]])).item() == pytest.approx(0.2 - 2.0)


def test_hardest_pair_takes_batch_extremes() -> None:
    positive = T([[0.1, 0.5, 0.2], [0.3, 0.4, 0.05]])
    negative = T([[1.0, 2.0, 0.7], [1.5, 0.9, 2.5]])
    # largest positive angle 0.5 at (0, 1): 0.5 - 2.0; smallest negative angle 0.7 at (0, 2): 0.2 - 0.7
    assert hardest_pair_loss(positive, negative).item() == pytest.approx((0.5 - 2.0) + (0.2 - 0.7))


def test_pull_back_hand_cases() -> None:
    e = T([[1.0, 0.0], [0.0, 1.0]])
    assert pull_back_loss(e, e).item() == pytest.approx(0.0, abs=1e-7)
    assert pull_back_loss(e, -e).item() == pytest.approx(1.0)
    assert pull_back_loss(e, T([[0.0, 1.0], [1.0, 0.0]])).item() == pytest.approx(0.5)
    assert pull_back_loss(e, T([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx((1 - 0.5) / 2)


def test_re_loss_combines_terms_with_weights() -> None:
    pos, neg, root, positive, negative = _bent_chain()
    # frozen: positives unchanged (cos 1), negatives flipped (cos -1) -> mean cos = (4 - 3) / 7
    out = re_loss(pos, neg, root, pos, -neg, lambda_pull=10.0, lambda_entail=2.0, lambda_margin=0.5)
    pull = (1 - 1 / 7) / 2
    entail = sum(positive) / 3 - sum(negative) / 3
    hardest = (positive[2] - negative[2]) + (positive[0] - negative[0])  # argmax P = 3rd, argmin N = 1st
    assert out.pull_back.item() == pytest.approx(pull, abs=1e-6)
    assert out.entailment.item() == pytest.approx(entail, abs=CLAMP_ATOL)
    assert out.hardest_pair.item() == pytest.approx(hardest, abs=CLAMP_ATOL)
    assert out.total.item() == pytest.approx(10 * pull + 2 * entail + 0.5 * hardest, abs=3 * CLAMP_ATOL)


def test_default_weights_are_the_papers() -> None:
    pos, neg, root, _, _ = _bent_chain()
    out = re_loss(pos, neg, root, pos, -neg)
    expected = 10 * out.pull_back.item() + out.entailment.item() + out.hardest_pair.item()
    assert out.total.item() == pytest.approx(expected, rel=1e-6)


def test_gradients_stay_finite_on_degenerate_input() -> None:
    """Identical levels (e' == e) and children straight on (angle 0) must not give NaN gradients."""
    pos = T([[[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]], requires_grad=True)
    neg = T([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]], requires_grad=True)
    root = torch.zeros(2, requires_grad=True)
    re_loss(pos, neg, root, pos.detach(), neg.detach()).total.backward()
    for tensor in (pos, neg, root):
        assert torch.isfinite(tensor.grad).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_loss_is_rotation_invariant(seed: int) -> None:
    """Angles, distances and cosines do not change under a rotation of the whole space."""
    gen = torch.Generator().manual_seed(seed)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)  # noqa: E731
    pos, neg, root, ref_p, ref_n = unit(3, 4, 5), unit(3, 3, 5), unit(5), unit(3, 4, 5), unit(3, 3, 5)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    a = re_loss(pos, neg, root, ref_p, ref_n)
    b = re_loss(pos @ rotation, neg @ rotation, root @ rotation, ref_p @ rotation, ref_n @ rotation)
    for x, y in zip(a, b):
        assert x.item() == pytest.approx(y.item(), abs=1e-9)
