"""Metrics: teacher entropy, student diameter, teacher–student divergence, and IR measures.

Tensor math is written as free functions over (B, G) scores or (B, G, D) embeddings; retrieval
effectiveness (nDCG, RR, recall) comes from ``ir_measures``, never re-implemented here.
Run and per-query files are written by ``writers.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Entropy (Parry, Ganguly, MacAvaney, arXiv 2505.21058)
# ---------------------------------------------------------------------------------------------


def _check_2d(x: Tensor, name: str, what: str) -> None:
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"{name}: {what} must be (B, G) with G >= 2, got {tuple(x.shape)}")


def listwise_entropy(teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Shannon entropy (nats) of the teacher's tempered distribution over each group.

    Args:
        teacher: (B, G) float teacher scores.
        temperature: T > 0.

    Shapes:
        teacher (B, G) -> (B,).

    Formula:
        .. math:: H_b = -\\sum_j p_{b,j}\\log p_{b,j},\\quad p_b = \\mathrm{softmax}(t_b/T)

        Between 0 (one document takes all the mass) and log G (uniform).

    References:
        Parry, Ganguly, MacAvaney, "Disentangling Locality and Entropy in Ranking Distillation",
        arXiv 2505.21058.

    Example::

        >>> listwise_entropy(torch.zeros(1, 4)).item() == math.log(4)
        True
    """
    _check_2d(teacher, "listwise_entropy", "teacher scores")
    log_p = torch.log_softmax(teacher.double() / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).to(teacher.dtype if teacher.is_floating_point() else torch.float32)


def binary_entropy_from_logits(z: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(z)), stable for large |z|: softplus(z) - z·sigmoid(z)."""
    return torch.nn.functional.softplus(z) - z * torch.sigmoid(z)


def pairwise_entropy(teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean binary entropy (nats) of the teacher's tempered pairwise preferences per group.

    Args:
        teacher: (B, G) float teacher scores.
        temperature: T > 0.

    Shapes:
        teacher (B, G) -> (B,).

    Formula:
        .. math:: H_b = \\frac{2}{G(G-1)}\\sum_{i<j} h\\big(\\sigma((t_{b,i}-t_{b,j})/T)\\big),
                  \\quad h(p) = -p\\log p - (1-p)\\log(1-p)

        Between 0 (every pair decided) and log 2 (every pair a coin toss).

    References:
        Parry, Ganguly, MacAvaney, arXiv 2505.21058 (the pairwise view of teacher entropy).

    Example::

        >>> round(pairwise_entropy(torch.zeros(1, 3)).item(), 6) == round(math.log(2), 6)
        True
    """
    _check_2d(teacher, "pairwise_entropy", "teacher scores")
    g = teacher.shape[1]
    i, j = torch.triu_indices(g, g, 1, device=teacher.device)
    t = teacher.double()
    z = (t[:, i] - t[:, j]) / temperature
    return binary_entropy_from_logits(z).mean(-1).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Locality: diameter of a query's group in the student's embedding space
# ---------------------------------------------------------------------------------------------


def diameter(embeddings: Tensor, alpha: float = 0.99) -> Tensor:
    """α-quantile of the pairwise Euclidean distances between L2-normalised group embeddings.

    Args:
        embeddings: (B, G, D) float, one embedding per document of each query's group. For a
            bi-encoder student these are the pooled document embeddings; for a cross-encoder the
            final-layer [CLS] state of each (query, document) pair.
        alpha: quantile in (0, 1], linear interpolation (``torch.quantile`` default); alpha = 1
            is the classical diameter (largest distance).

    Shapes:
        embeddings (B, G, D) -> (B,).

    Formula:
        .. math:: \\mathrm{diam}_\\alpha(b) = Q_\\alpha\\{\\lVert \\hat e_{b,i} - \\hat e_{b,j}\\rVert_2 : i<j\\},
                  \\quad \\hat e = e/\\lVert e\\rVert_2

        Distances lie in [0, 2]; a small diameter means a local (tightly clustered) group.

    References:
        Parry, Ganguly, MacAvaney, arXiv 2505.21058 (locality of the sampled documents).

    Example::

        >>> e = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
        >>> diameter(e, alpha=1.0).item()
        2.0
    """
    if embeddings.dim() != 3 or embeddings.shape[1] < 2:
        raise ValueError(f"diameter: embeddings must be (B, G, D) with G >= 2, got {tuple(embeddings.shape)}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"diameter: alpha must be in (0, 1], got {alpha}")
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    g = e.shape[1]
    i, j = torch.triu_indices(g, g, 1, device=e.device)
    dist = (e[:, i] - e[:, j]).norm(dim=-1)  # (B, P)
    return torch.quantile(dist, alpha, dim=-1).to(torch.float32)


def kl_divergence(teacher: Tensor, student: Tensor, temperature: float = 1.0, exact: bool = True) -> Tensor:
    """Per-query ``KL(softmax(t/T) || softmax(s/T))`` in nats (``torch.nn.functional.kl_div`` on log-probabilities).

    Shapes: teacher, student (B, G) -> (B,). The batch mean of this is the ``kl`` loss, which calls it
    with ``exact=False`` (in the inputs' dtype, differentiable); metrics compute it in float64.
    """
    _check_2d(teacher, "kl_divergence", "teacher scores")
    if student.shape != teacher.shape:
        raise ValueError(f"kl_divergence: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    if exact:
        teacher, student = teacher.double(), student.double()
    log_p = torch.log_softmax(teacher / temperature, dim=-1)
    log_q = torch.log_softmax(student / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return kl.to(torch.float32) if exact else kl


def summarize(values: Tensor, prefix: str) -> dict[str, float]:
    """Mean and quartiles of a (N,) tensor as ``{prefix: mean, prefix_q25: …, prefix_q50, prefix_q75}``."""
    v = values.double().flatten()
    if v.numel() == 0:
        return {}
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {
        prefix: float(v.mean()),
        f"{prefix}_q25": float(q[0]),
        f"{prefix}_q50": float(q[1]),
        f"{prefix}_q75": float(q[2]),
    }


# ---------------------------------------------------------------------------------------------
# Retrieval effectiveness through ir_measures
# ---------------------------------------------------------------------------------------------

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def evaluate(run: Run, qrels: Qrels, measures: Iterable[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate and per-query values of ``measures`` (ir_measures strings) for ``run``.

    Queries of ``qrels`` absent from ``run`` count as zero (the run retrieved nothing), as trec_eval
    does with ``-c``: every judged query is averaged, so runs over the same qrels compare fairly.

    Returns:
        ``({"nDCG@10": mean, …}, {query_id: {"nDCG@10": value, …}})``.
    """
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    names = {repr(m): str(m) for m in parsed}
    judged = {q for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    run = {q: dict(docs) for q, docs in run.items() if q in judged}
    per_query: dict[str, dict[str, float]] = {q: {str(m): 0.0 for m in parsed} for q in judged}
    qrels_d = {q: dict(d) for q, d in qrels.items() if q in judged}
    for m in ir_measures.iter_calc(parsed, qrels_d, run):
        per_query[m.query_id][names[repr(m.measure)]] = float(m.value)
    agg = {str(m): (sum(v[str(m)] for v in per_query.values()) / max(len(per_query), 1)) for m in parsed}
    return agg, per_query


def read_trec_run(source) -> dict[str, dict[str, float]]:
    """A TREC run (a path, ``.gz`` included, or an open text file) as ``{qid: {docid: score}}``
    (``ir_measures.read_trec_run``; a malformed line raises ``ValueError``)."""
    import ir_measures

    run: dict[str, dict[str, float]] = {}
    for d in ir_measures.read_trec_run(source if hasattr(source, "read") else str(source)):
        run.setdefault(d.query_id, {})[d.doc_id] = d.score
    return run
