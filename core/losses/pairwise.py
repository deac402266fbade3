"""Pairwise losses: ordered pairs of documents within each query's group."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import check_scores, register_loss, upcast


def pairwise_differences(x: Tensor) -> Tensor:
    """Row-aligned differences ``x_i - x_j`` for every pair i < j of each group.

    Shapes: x (B, G) -> (B, G(G-1)/2), pairs in ``torch.triu_indices(G, G, 1)`` order.
    """
    i, j = torch.triu_indices(x.shape[1], x.shape[1], 1, device=x.device)
    return x[:, i] - x[:, j]


@register_loss(
    "ranknet",
    needs_teacher=False,
    citation="""
@inproceedings{burges2005ranknet,
  title={Learning to Rank using Gradient Descent},
  author={Burges, Chris and Shaked, Tal and Renshaw, Erin and Lazier, Ari and Deeds, Matt and Hamilton, Nicole and Hullender, Greg},
  booktitle={ICML}, year={2005}, doi={10.1145/1102351.1102363}
}""",
)
def ranknet(
    student: Tensor,
    teacher: Optional[Tensor],
    temperature: float = 1.0,
    mode: Literal["soft", "hard"] = "soft",
) -> Tensor:
    """RankNet: pairwise logistic loss on score differences, targets from the teacher.

    Args:
        student: (B, G) float student scores, column 0 the positive.
        teacher: (B, G) float teacher scores, or None: then the only pairs are (positive, negative)
            with target 1 (the relevance label).
        temperature: T > 0; soft targets are ``sigmoid((t_i - t_j) / T)``.
        mode: ``soft`` (tempered teacher probabilities) or ``hard`` (1 if t_i > t_j, 0 if less,
            0.5 on ties; T has no effect on a hard order).

    Shapes:
        student, teacher (B, G); returns () scalar.

    Formula:
        Binary cross-entropy between ``sigmoid(s_i - s_j)`` and the target for every pair i < j,
        mean over pairs and queries.

        .. math:: \\mathcal{L} = -\\frac{1}{B\\,P}\\sum_b\\sum_{i<j} y_{ij}\\log\\sigma(s_i-s_j) + (1-y_{ij})\\log(1-\\sigma(s_i-s_j)),
                  \\quad y_{ij} = \\sigma((t_i-t_j)/T)

    References:
        Burges et al., "Learning to Rank using Gradient Descent", ICML 2005.

    Inputs:
        the teacher's scores of the sampled group (B, G) when a teacher is configured (``Trainer`` looks them up in the prepared score table).

    Relations:
        ``margin_mse`` regresses the same differences instead of classifying them; the target's
        binary entropy is ``ranksweep.core.metrics.pairwise_entropy``.

    Example::

        >>> s = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[1.0, 0.0]])
        >>> round(ranknet(s, t, mode="hard").item(), 4)  # -log sigmoid(1)
        0.3133
    """
    if mode not in ("soft", "hard"):
        raise ValueError(f"ranknet: mode must be 'soft' or 'hard', got {mode!r}")
    check_scores(student, teacher, False, "ranknet")
    s = upcast(student)
    if teacher is None:
        diff = s[:, :1] - s[:, 1:]
        return F.binary_cross_entropy_with_logits(diff, torch.ones_like(diff))
    diff = pairwise_differences(s)
    tdiff = pairwise_differences(upcast(teacher))
    if mode == "soft":
        target = torch.sigmoid(tdiff / temperature)
    else:
        target = ((tdiff > 0).to(tdiff.dtype) + 0.5 * (tdiff == 0).to(tdiff.dtype))
    return F.binary_cross_entropy_with_logits(diff, target)
