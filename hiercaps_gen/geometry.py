"""Radial Embedding geometry, each measure once: root distance, exterior angle, Kendall τ.

The root r is the embedding of the empty string under the encoder in use. Generality is the
distance ‖e − r‖ (larger: more specific), and a text e' is "below" e when it lies in the cone at
e that opens away from the root, i.e. when the exterior angle Ξ_r(e, e') is small (Alper &
Averbuch-Elor, ECCV 2024). The abstract and distill checks, the filter, the RE loss, evaluate and
the report all read these functions, so a hierarchy is judged the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

COS_EPS = 1e-6  # keep arccos away from ±1, where its gradient is infinite


class Encodes(Protocol):
    """Anything with `encode(texts) -> unit vectors` (numpy or torch), e.g. a TextEmbedder or a TextEncoder."""

    def encode(self, texts: list[str]) -> Any: ...


def root_distance(e: Any, root: Any) -> Any:
    """‖e − r‖ over the last dimension; torch in, torch out (with graph), numpy otherwise."""
    if isinstance(e, torch.Tensor):
        return torch.linalg.vector_norm(e - root, dim=-1)
    return np.linalg.norm(np.asarray(e, dtype=np.float64) - np.asarray(root, dtype=np.float64), axis=-1)


def root_distances(encoder: Encodes, chains: Sequence[Sequence[str]]) -> np.ndarray:
    """(chains, levels) root distances of every text of every chain; each distinct text and the
    root are encoded once, in one call."""
    unique = sorted({t for chain in chains for t in chain})
    if not unique:
        return np.zeros((len(chains), 0))
    emb = encoder.encode(unique + [""])
    emb = emb.numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    dist = dict(zip(unique, root_distance(emb[:-1], emb[-1])))
    return np.array([[dist[t] for t in chain] for chain in chains], dtype=np.float64)


def exterior_angle(e: torch.Tensor, e_child: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Ξ_r(e, e') in radians: the angle between (e − r) and (e' − e); broadcasts over leading dims.

    0 when e' continues straight away from the root through e, π when it points back at the root.
    A zero vector (e' == e) has cosine 0 here, i.e. an angle of π/2.
    """
    cos = F.cosine_similarity(e - root, e_child - e, dim=-1, eps=1e-8)
    return torch.arccos(cos.clamp(-1 + COS_EPS, 1 - COS_EPS))


def hierarchy_angles(pos: torch.Tensor, neg: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive angles Ξ(p_k, p_{k+1}) and negative angles Ξ(p_k, n_k), k = 1..L−1, each (B, L−1).

    `neg` needs at least L−1 levels; n_L takes no part in the angles.
    """
    levels = pos.shape[1]
    positive = exterior_angle(pos[:, :-1], pos[:, 1:], root)
    negative = exterior_angle(pos[:, : levels - 1], neg[:, : levels - 1], root)
    return positive, negative


def kendall_tau(values: Any) -> np.ndarray:
    """Kendall τ-b of each row (last axis) against its positions 1..L; NaN where all values tie.

    The positions never tie, so τ-b = (C − D) / sqrt(pairs · untied pairs): it equals τ-a when the
    values do not tie either, and scipy's `kendalltau` (the paper's d_corr) always. A row whose
    levels are all equally far from the root shows no order at all: NaN, which `shows_order`
    counts as failing any threshold. A 1-D input gives a 0-d array (`float()` it).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    i, j = np.triu_indices(n, k=1)
    signs = np.sign(values[..., j] - values[..., i])
    untied = (signs != 0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, signs.sum(axis=-1) / np.sqrt(len(i) * untied), np.nan)


def shows_order(tau: float, threshold: float) -> bool:
    """Whether a τ passes an order check: NaN (all levels tie) never does."""
    return not np.isnan(tau) and tau >= threshold
