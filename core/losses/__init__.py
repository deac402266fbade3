"""Loss functions for ranking distillation, one family per module.

``LOSSES`` maps each registered name to a pure function
``f(student (B, G), teacher (B, G) | None, temperature, **params) -> () scalar``:

=============  ==============  ====================================================
name           needs teacher   family
=============  ==============  ====================================================
``lce``        no              listwise contrastive (InfoNCE on the positive)
``listnet``    yes             listwise (top-one cross-entropy)
``ranknet``    optional        pairwise logistic (soft or hard teacher order)
``margin_mse`` yes             distillation of positive-negative margins
``kl``         yes             listwise distillation ``KL(softmax(t/T) || softmax(s/T))``
=============  ==============  ====================================================
"""

from .base import LOSSES, WeightedLoss, check_loss_params, check_scores, loss_params, register_loss
from .distill import kl, margin_mse
from .listwise import lce, listnet
from .pairwise import pairwise_differences, ranknet

__all__ = [
    "LOSSES",
    "WeightedLoss",
    "check_loss_params",
    "check_scores",
    "loss_params",
    "register_loss",
    "kl",
    "margin_mse",
    "lce",
    "listnet",
    "ranknet",
    "pairwise_differences",
]
