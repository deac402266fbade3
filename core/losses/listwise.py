"""Listwise losses: a distribution over each query's group.

``lce`` needs no teacher (one-hot on the positive); ``listnet`` matches the teacher's top-one
distribution.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import check_scores, register_loss, softmax_targets, upcast


@register_loss(
    "lce",
    needs_teacher=False,
    citation="""
@inproceedings{gao2021lce,
  title={Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline},
  author={Gao, Luyu and Dai, Zhuyun and Callan, Jamie},
  booktitle={ECIR}, year={2021}, url={https://arxiv.org/abs/2101.08751}
}""",
)
def lce(student: Tensor, teacher: Optional[Tensor] = None, temperature: float = 1.0) -> Tensor:
    """Localised contrastive estimation: cross-entropy of the positive against its group.

    Args:
        student: (B, G) float student scores, column 0 the positive.
        teacher: ignored (LCE trains on the relevance label alone); may be None.
        temperature: ignored: LCE has no teacher target to sharpen.

    Shapes:
        student (B, G); returns () scalar.

    Formula:
        The negative log-likelihood of the positive under a softmax over the group, mean over queries.

        .. math:: \\mathcal{L} = -\\frac{1}{B}\\sum_b \\log \\frac{e^{s_{b,0}}}{\\sum_j e^{s_{b,j}}}

    References:
        Gao, Dai, Callan, "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline",
        ECIR 2021, https://arxiv.org/abs/2101.08751 (InfoNCE: van den Oord et al. 2018).

    Inputs:
        the student's scores of the sampled group (B, G), the positive in column 0 (as every sampler emits it); teacher scores unused.

    Relations:
        The contrastive baseline of Xu et al. (arXiv 2507.08336); ``kl`` is its distillation
        counterpart. With in-batch negatives the same function runs on (B, B*G) scores.

    Example::

        >>> s = torch.tensor([[2.0, 0.0, 0.0]])
        >>> round(lce(s).item(), 4)
        0.2395
    """
    check_scores(student, teacher, False, "lce")
    target = torch.zeros(student.shape[0], dtype=torch.long, device=student.device)
    return F.cross_entropy(upcast(student), target)


@register_loss(
    "listnet",
    needs_teacher=True,
    citation="""
@inproceedings{cao2007listnet,
  title={Learning to Rank: From Pairwise Approach to Listwise Approach},
  author={Cao, Zhe and Qin, Tao and Liu, Tie-Yan and Tsai, Ming-Feng and Li, Hang},
  booktitle={ICML}, year={2007}, doi={10.1145/1273496.1273513}
}""",
)
def listnet(student: Tensor, teacher: Optional[Tensor], temperature: float = 1.0) -> Tensor:
    """ListNet: cross-entropy between the teacher's and the student's top-one distributions.

    Args:
        student: (B, G) float student scores.
        teacher: (B, G) float teacher scores (required).
        temperature: T > 0 applied to the teacher: targets are ``softmax(t / T)``.

    Shapes:
        student, teacher (B, G); returns () scalar.

    Formula:
        Cross-entropy of the student's softmax against the tempered teacher softmax, mean over queries.

        .. math:: \\mathcal{L} = -\\frac{1}{B}\\sum_b \\sum_j \\mathrm{softmax}(t_b/T)_j \\log \\mathrm{softmax}(s_b)_j

    References:
        Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML 2007.

    Inputs:
        the teacher's scores of the sampled group (B, G), looked up by ``Trainer`` in the prepared score table.

    Relations:
        Differs from ``kl`` by the teacher entropy (constant in the student) and by leaving the
        student untempered; ``lce`` is the one-hot special case.

    Example::

        >>> s = torch.zeros(1, 2); t = torch.tensor([[1.0, 1.0]])
        >>> round(listnet(s, t).item(), 4)  # log 2
        0.6931
    """
    check_scores(student, teacher, True, "listnet")
    p = softmax_targets(teacher, temperature)
    return -(p * torch.log_softmax(upcast(student), dim=-1)).sum(-1).mean()
