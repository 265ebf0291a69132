"""Radial Embedding (RE) geometry and loss as pure torch functions (Alper & Averbuch-Elor, ECCV 2024).

Embeddings are unit vectors; the root r is the embedding of the empty string under the encoder
being trained. Generality is the distance to the root, and a text e' is "below" e when it lies in
the cone at e that opens away from the root, i.e. when the exterior angle Ξ_r(e, e') between
(e − r) and (e' − e) is small. Shapes: hierarchies are (B, levels, D), the root is (D,).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

COS_EPS = 1e-6  # keep arccos away from ±1, where its gradient is infinite


class RELoss(NamedTuple):
    """The weighted total and its three unweighted parts (for the loss log)."""

    total: torch.Tensor
    pull_back: torch.Tensor
    entailment: torch.Tensor
    hardest_pair: torch.Tensor


def generality(e: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """‖e − r‖ over the last dimension: larger means more specific."""
    return torch.linalg.vector_norm(e - root, dim=-1)


def exterior_angle(e: torch.Tensor, e_child: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Ξ_r(e, e') in radians: the angle between (e − r) and (e' − e); broadcasts over leading dims.

    0 when e' continues straight away from the root through e, π when it points back at the root.
    A zero vector (e' == e) has cosine 0 here, i.e. an angle of π/2.
    """
    cos = F.cosine_similarity(e - root, e_child - e, dim=-1, eps=1e-8)
    return torch.arccos(cos.clamp(-1 + COS_EPS, 1 - COS_EPS))


def hierarchy_angles(pos: torch.Tensor, neg: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive angles Ξ(p_k, p_{k+1}) and negative angles Ξ(p_k, n_k), k = 1..L−1, each (B, L−1).

    `neg` needs at least L−1 levels; n_L is not used by the loss.
    """
    levels = pos.shape[1]
    positive = exterior_angle(pos[:, :-1], pos[:, 1:], root)
    negative = exterior_angle(pos[:, : levels - 1], neg[:, : levels - 1], root)
    return positive, negative


def entailment_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """mean Ξ(p_k, p_{k+1}) − mean Ξ(p_k, n_k): children inside the cone, siblings outside it."""
    return positive.mean() - negative.mean()


def hardest_pair_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(P + N) at the batch's largest positive angle plus (P + N) at its smallest negative angle.

    P is a positive angle and N the negated negative angle at the same (hierarchy, level), as in
    the entailment term; the two pairs are the hardest of the whole batch.
    """
    margin = (positive - negative).flatten()
    return margin[positive.flatten().argmax()] + margin[negative.flatten().argmin()]


def pull_back_loss(e: torch.Tensor, e_frozen: torch.Tensor) -> torch.Tensor:
    """(1 − mean cos(e, e_frozen)) / 2 in [0, 1]: keeps the tuned encoder near the original."""
    return (1 - F.cosine_similarity(e, e_frozen.detach(), dim=-1).mean()) / 2


def re_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    root: torch.Tensor,
    pos_frozen: torch.Tensor,
    neg_frozen: torch.Tensor,
    lambda_pull: float = 10.0,
    lambda_entail: float = 1.0,
    lambda_margin: float = 1.0,
) -> RELoss:
    """λp · pull-back + λe · entailment + λm · hardest-pair for one batch of hierarchies.

    pos (B, L, D) and neg (B, L, D) come from the encoder being trained, root (D,) too; the
    *_frozen tensors are the same texts under the frozen original encoder. As in the authors'
    `batch2losses`, pull-back averages over all 2L texts (n_L included) while the angle terms use
    n_1..n_{L−1} only.
    """
    positive, negative = hierarchy_angles(pos, neg, root)
    pull = pull_back_loss(torch.cat([pos.flatten(0, 1), neg.flatten(0, 1)]),
                          torch.cat([pos_frozen.flatten(0, 1), neg_frozen.flatten(0, 1)]))
    entail = entailment_loss(positive, negative)
    hardest = hardest_pair_loss(positive, negative)
    total = lambda_pull * pull + lambda_entail * entail + lambda_margin * hardest
    return RELoss(total, pull, entail, hardest)

