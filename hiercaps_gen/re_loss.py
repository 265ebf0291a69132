"""The Radial Embedding (RE) loss as pure torch functions (Alper & Averbuch-Elor, ECCV 2024).

The geometry it is built on (root distance, exterior angle) lives in `geometry.py`. Embeddings are
unit vectors; the root is the embedding of "" under the encoder being trained. Shapes:
hierarchies are (B, levels, D), the root is (D,).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from hiercaps_gen.geometry import hierarchy_angles


class RELoss(NamedTuple):
    """The weighted total and its three unweighted parts (for the loss log)."""

    total: torch.Tensor
    pull_back: torch.Tensor
    entailment: torch.Tensor
    hardest_pair: torch.Tensor


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

