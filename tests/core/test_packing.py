"""The packed path (every sequence of a step in one unpadded row, varlen attention) against the padded and
chunked paths: same scores, embeddings and gradients in float32 on the CPU, for bi- and cross-encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranksweep.core.data.batching import Packed, SpecialTokens, single_rows
from ranksweep.core.models import BiEncoder, CrossEncoder, load_encoder


def _batch(b: int = 3, g: int = 4, seed: int = 0):
    """B queries of 3..9 tokens and B*G documents of 5..40 tokens (ids of ordinary word pieces)."""
    rng = np.random.default_rng(seed)
    queries = [rng.integers(2000, 20000, size=rng.integers(3, 10)) for _ in range(b)]
    docs = [rng.integers(2000, 20000, size=rng.integers(5, 41)) for _ in range(b * g)]
    return queries, docs


def _student(kind: str, tiny_model: str, pooling: str = "mean"):
    torch.manual_seed(0)
    enc = load_encoder(tiny_model)
    model = BiEncoder(enc, pooling, "cos", 20.0) if kind == "bi" else CrossEncoder(enc)
    return model.eval()  # dropout off: the paths must agree exactly, gradients included


SPECIAL = SpecialTokens(cls=101, sep=102, pad=0)


def _run(model, queries, docs, packing):
    model.zero_grad(set_to_none=True)
    out = model.forward_groups(queries, docs, SPECIAL, 1 << 30, torch.device("cpu"), packing=packing)
    # a loss that reads every score and every embedding, so every parameter's gradient depends on all of them
    loss = torch.nn.functional.cross_entropy(out.scores, torch.zeros(len(queries), dtype=torch.long)) + out.embeddings.square().mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.scores.detach(), out.embeddings.detach(), grads


@pytest.mark.parametrize("kind,pooling", [("bi", "mean"), ("bi", "cls"), ("cross", "cls")])
def test_packed_scores_and_gradients_equal_the_padded_paths(tiny_model, kind, pooling):
    queries, docs = _batch()
    model = _student(kind, tiny_model, pooling)
    ref_s, ref_e, ref_g = _run(model, queries, docs, "padded")
    for packing in ("packed", "chunked"):
        s, e, g = _run(model, queries, docs, packing)
        assert torch.allclose(s, ref_s, atol=1e-5, rtol=0), (packing, (s - ref_s).abs().max())
        assert torch.allclose(e, ref_e, atol=1e-5, rtol=0), (packing, (e - ref_e).abs().max())
        assert g.keys() == ref_g.keys() and len(g) > 10
        for name in g:
            assert torch.allclose(g[name], ref_g[name], atol=1e-5, rtol=1e-4), (packing, name, (g[name] - ref_g[name]).abs().max())
    assert ref_s.std() > 0  # the batch's scores differ: a degenerate model would make every path agree


def test_a_packed_row_keeps_sequences_apart():
    """Offsets, restarting positions and the segment of each token; one sequence's tokens never reach another's."""
    queries, _ = _batch(b=4)
    p = Packed.of(*single_rows(queries, SPECIAL))
    lengths = [len(q) + 2 for q in queries]
    assert p.cu_seqlens.tolist() == list(np.cumsum([0, *lengths])) and p.max_len == max(lengths)
    assert p.input_ids.shape == (1, sum(lengths))
    assert p.position_ids[0].tolist() == [i for n in lengths for i in range(n)]
    assert p.segments.tolist() == [s for s, n in enumerate(lengths) for _ in range(n)]
    starts = p.cu_seqlens[:-1].long()
    assert (p.input_ids[0, starts] == SPECIAL.cls).all() and (p.input_ids[0, p.cu_seqlens[1:].long() - 1] == SPECIAL.sep).all()


def test_changing_one_sequence_leaves_the_others_packed_states_unchanged(tiny_model):
    """The block-diagonal attention of the packed row: editing the second query changes only its own embedding."""
    queries, _ = _batch(b=3)
    model = _student("bi", tiny_model)
    with torch.no_grad():
        a = model.encode(queries, SPECIAL, 1 << 30, torch.device("cpu"), "packed")
        edited = [queries[0], queries[1][::-1].copy(), queries[2]]
        b = model.encode(edited, SPECIAL, 1 << 30, torch.device("cpu"), "packed")
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[2], b[2], atol=1e-6)
    assert not torch.allclose(a[1], b[1], atol=1e-3)
