"""Distillation losses that regress or match the teacher's scores directly."""

from __future__ import annotations

from typing import Optional

import torch  # noqa: F401 (the examples in the docstrings use it)
from torch import Tensor

from ..metrics import kl_divergence
from .base import check_scores, register_loss, upcast


@register_loss(
    "margin_mse",
    needs_teacher=True,
    citation="""
@article{hofstaetter2020marginmse,
  title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
  author={Hofst{\\"a}tter, Sebastian and Althammer, Sophia and Schr{\\"o}der, Michael and Sertkan, Mete and Hanbury, Allan},
  journal={arXiv preprint arXiv:2010.02666}, year={2020}
}""",
)
def margin_mse(student: Tensor, teacher: Optional[Tensor], temperature: float = 1.0) -> Tensor:
    """Margin-MSE: the student's positive-negative margins regress the teacher's.

    Args:
        student: (B, G) float student scores, column 0 the positive.
        teacher: (B, G) float teacher scores (required).
        temperature: T > 0 dividing the teacher margins (T = 1 is the original loss).

    Shapes:
        student, teacher (B, G); returns () scalar.

    Formula:
        Mean squared error between ``s_0 - s_j`` and ``(t_0 - t_j) / T`` over negatives j >= 1,
        mean over negatives and queries.

        .. math:: \\mathcal{L} = \\frac{1}{B(G-1)}\\sum_b\\sum_{j\\ge1}\\big((s_{b,0}-s_{b,j}) - (t_{b,0}-t_{b,j})/T\\big)^2

    References:
        Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
        Knowledge Distillation", https://arxiv.org/abs/2010.02666 (2020).

    Inputs:
        the teacher's scores of the sampled group (B, G), looked up by ``Trainer`` in the prepared score table.

    Relations:
        Scale-sensitive (unlike ``kl``/``listnet``): teacher and student scores must live on
        comparable scales, which T adjusts. ``ranknet`` classifies the same margins.

    Example::

        >>> s = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[3.0, 0.0]])
        >>> margin_mse(s, t).item()
        4.0
    """
    check_scores(student, teacher, True, "margin_mse")
    s, t = upcast(student), upcast(teacher)
    sm = s[:, :1] - s[:, 1:]
    tm = (t[:, :1] - t[:, 1:]) / temperature
    return ((sm - tm) ** 2).mean()


@register_loss(
    "kl",
    needs_teacher=True,
    citation="""
@article{hinton2015distilling,
  title={Distilling the Knowledge in a Neural Network},
  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal={arXiv preprint arXiv:1503.02531}, year={2015}
}""",
)
def kl(student: Tensor, teacher: Optional[Tensor], temperature: float = 1.0) -> Tensor:
    """Listwise KL divergence from the tempered teacher to the tempered student distribution.

    Args:
        student: (B, G) float student scores.
        teacher: (B, G) float teacher scores (required).
        temperature: T > 0 applied to both teacher and student.

    Shapes:
        student, teacher (B, G); returns () scalar.

    Formula:
        ``KL(softmax(t/T) || softmax(s/T))`` per query, mean over queries (no T^2 factor).

        .. math:: \\mathcal{L} = \\frac{1}{B}\\sum_b\\sum_j p_{b,j}\\,(\\log p_{b,j} - \\log q_{b,j}),
                  \\quad p = \\mathrm{softmax}(t/T),\\ q = \\mathrm{softmax}(s/T)

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv 1503.02531;
        used for ranking distillation by Parry, Ganguly, MacAvaney, arXiv 2505.21058.

    Inputs:
        the teacher's scores of the sampled group (B, G), looked up by ``Trainer`` in the prepared score table.

    Relations:
        The teacher entropy it sees is ``ranksweep.core.metrics.listwise_entropy(t, T)``;
        ``listnet`` is the cross-entropy variant with an untempered student.

    Example::

        >>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[0.0, 0.0]])
        >>> kl(s, t).item()
        0.0
    """
    check_scores(student, teacher, True, "kl")
    return kl_divergence(upcast(teacher), upcast(student), temperature, exact=False).mean()


__all__ = ["margin_mse", "kl"]
