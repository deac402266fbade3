"""Shared machinery of the loss functions: the registry, shape checks, weighted terms.

Every loss is a pure function ``f(student (B, G), teacher (B, G) | None, temperature, **params)
-> () scalar`` over scores. Column 0 of each group is the positive; losses average over queries
(and over pairs or negatives within a query). Losses never see a model, so any student pairs with
any loss.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..registry import Registry

LossFn = Callable[..., Tensor]

LOSSES: Registry[LossFn] = Registry("loss")


def register_loss(name: str, *, needs_teacher: bool, citation: str = "") -> Callable[[LossFn], LossFn]:
    """Register ``fn`` under ``name``; ``fn.needs_teacher`` and ``fn.citation`` (BibTeX) are kept on it."""

    def deco(fn: LossFn) -> LossFn:
        fn.needs_teacher = needs_teacher  # type: ignore[attr-defined]
        fn.citation = citation.strip()  # type: ignore[attr-defined]
        LOSSES.register(name, fn)
        return fn

    return deco


def check_scores(student: Tensor, teacher: Optional[Tensor], needs_teacher: bool, name: str) -> None:
    """Raise ValueError unless ``student`` is (B, G>=2) and ``teacher`` (when given) matches it."""
    if student.dim() != 2 or student.shape[1] < 2:
        raise ValueError(
            f"{name}: student scores must be (B, G) with G >= 2 (column 0 = positive), got {tuple(student.shape)}; "
            "reshape flat scores with scores.view(B, G)"
        )
    if teacher is None:
        if needs_teacher:
            raise ValueError(f"{name}: needs teacher scores (B, G) but got None; use 'lce' for training without a teacher")
        return
    if teacher.shape != student.shape:
        raise ValueError(
            f"{name}: teacher scores must have the student's shape (B, G) = {tuple(student.shape)}, "
            f"got {tuple(teacher.shape)}; look up teacher scores for exactly the student's group"
        )


def loss_params(name: str) -> dict[str, inspect.Parameter]:
    """Keyword parameters of loss ``name`` beyond (student, teacher, temperature)."""
    sig = inspect.signature(LOSSES[name])
    return {k: p for k, p in sig.parameters.items() if k not in ("student", "teacher", "temperature")}


def check_loss_params(name: str, params: dict) -> None:
    """Raise ValueError listing every parameter of ``params`` that loss ``name`` does not take."""
    known = loss_params(name)
    bad = sorted(set(params) - set(known))
    if bad:
        raise ValueError(f"loss {name!r} has no parameter(s) {bad}; it takes {sorted(known) or 'none'}")


@dataclass(frozen=True)
class WeightedLoss:
    """One configured term of the training objective, ``LOSSES[name](s, t, T, **params)``.

    Calling it returns the unweighted value (what the trial reports as ``train/<name>``); the
    trainer multiplies it by ``weight`` when it sums the objective.

    Example::

        term = WeightedLoss("ranknet", weight=0.5, params={"mode": "hard"})
        value = term(student_scores, teacher_scores, temperature=2.0)
    """

    name: str
    weight: float = 1.0
    params: Optional[dict] = None

    def __post_init__(self) -> None:
        check_loss_params(self.name, self.params or {})

    @property
    def fn(self) -> LossFn:
        return LOSSES[self.name]

    @property
    def needs_teacher(self) -> bool:
        return bool(self.fn.needs_teacher)  # type: ignore[attr-defined]

    @property
    def citation(self) -> str:
        return self.fn.citation  # type: ignore[attr-defined]

    def __call__(self, student: Tensor, teacher: Optional[Tensor], temperature: float = 1.0) -> Tensor:
        return self.fn(student, teacher, temperature, **(self.params or {}))


def upcast(x: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 scores from autocast are upcast; float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def softmax_targets(teacher: Tensor, temperature: float) -> Tensor:
    """Teacher distribution ``softmax(t / T)`` over each group, computed in at least float32."""
    return torch.softmax(upcast(teacher) / temperature, dim=-1)
