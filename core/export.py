"""The trained student as a model others load: a sentence-transformers folder (bi) or a transformers one (cross).

A trial keeps its final weights with ``save_student`` (``<output_dir>/model``: the encoder as a
transformers folder with its tokenizer, the cross-encoder's head, and ``ranksweep_student.json``:
kind, pooling, similarity, scale and lengths). ``export_student`` turns that into:

- **bi**: a sentence-transformers folder (Transformer → Pooling → Normalize when trained with
  cosine), ``similarity_fn_name`` as trained; ``SentenceTransformer(DIR)`` loads it. The trial's
  score is ``scale × similarity`` (the scale is in the model card and ``ranksweep_student.json``;
  it does not change a ranking).
- **cross**: a transformers sequence-classification folder with one logit, loaded by
  ``AutoModelForSequenceClassification`` and ``sentence_transformers.CrossEncoder`` (identity
  activation: the logit is the trial's score). The student scores ``w · h_CLS + b``; BERT's
  classification head is ``w' · tanh(W_p h_CLS + b_p) + b'``. The export sets ``W_p = εI``, ``b_p = 0``,
  ``w' = w / ε`` with ε = 1e-4, so ``w' · tanh(ε h) = w · h (1 - ε²h²/3 + …)``: equal to the student's
  score within ~1e-7 for hidden states of LayerNorm scale. Only BERT-family encoders (a pooler and a
  classifier) are exported this way; another architecture is refused with its name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .errors import RanksweepError

STUDENT_FILE = "ranksweep_student.json"
EPSILON = 1e-4


class ExportError(RanksweepError, ValueError):
    """A trial's model cannot be exported (the message says why)."""


def save_student(model, cfg, tokenizer, folder: str | Path) -> Path:
    """Write the student's final weights (``model``: a ``BiEncoder`` or ``CrossEncoder``) to ``folder``."""
    folder = Path(folder)
    (folder / "encoder").mkdir(parents=True, exist_ok=True)
    encoder = getattr(model.encoder, "_orig_mod", model.encoder)  # a compiled encoder saves its original module
    encoder.save_pretrained(folder / "encoder")
    tokenizer.save_pretrained(folder / "encoder")
    info = {"kind": cfg.student.kind, "model": cfg.student.model, "num_layers": cfg.student.num_layers,
            "max_query_length": cfg.data.max_query_length, "max_doc_length": cfg.data.max_doc_length}
    if cfg.student.kind == "bi":
        info.update(pooling=model.pooling, similarity=model.similarity, scale=float(model.scale))
    else:
        from safetensors.torch import save_file

        save_file({k: v.detach().float().cpu().contiguous() for k, v in model.head.state_dict().items()}, folder / "head.safetensors")
    (folder / STUDENT_FILE).write_text(json.dumps(info, indent=1))
    return folder


def student_info(folder: str | Path) -> dict:
    p = Path(folder) / STUDENT_FILE
    if not p.exists():
        raise ExportError(f"{folder} holds no trial weights ({STUDENT_FILE} missing)")
    return json.loads(p.read_text())


def export_student(src: str | Path, out: str | Path, card: Optional[str] = None) -> dict:
    """Build the loadable folder ``out`` from a trial's saved weights ``src``; return the student's info."""
    src, out = Path(src), Path(out)
    info = student_info(src)
    out.mkdir(parents=True, exist_ok=True)
    if info["kind"] == "bi":
        _export_bi(src, out, info)
    else:
        _export_cross(src, out, info)
    (out / STUDENT_FILE).write_text(json.dumps(info, indent=1))
    if card is not None:
        (out / "README.md").write_text(card)
    return info


def _export_bi(src: Path, out: Path, info: dict) -> None:
    from sentence_transformers import SentenceTransformer, models

    # the trial adds [CLS] and [SEP] around at most max_doc_length document tokens (sentence-transformers has one length for
    # queries and documents: a query longer than max_query_length is cut there in training, here at max_doc_length)
    transformer = models.Transformer(str(src / "encoder"), max_seq_length=info["max_doc_length"] + 2)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=info["pooling"])
    modules = [transformer, pooling] + ([models.Normalize()] if info["similarity"] == "cos" else [])
    st = SentenceTransformer(modules=modules, similarity_fn_name="cosine" if info["similarity"] == "cos" else "dot", device="cpu")
    st.save(str(out))


def _export_cross(src: Path, out: Path, info: dict) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(src / "encoder", num_labels=1)
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}  # the logit is the score
    model = AutoModelForSequenceClassification.from_pretrained(src / "encoder", config=config)
    base = getattr(model, model.base_model_prefix, None)
    pooler, classifier = getattr(base, "pooler", None), getattr(model, "classifier", None)
    if pooler is None or not isinstance(classifier, torch.nn.Linear) or not hasattr(pooler, "dense"):
        raise ExportError(f"exporting a cross-encoder needs a BERT-family architecture (pooler + linear classifier); "
                          f"{type(model).__name__} has another head")
    head = load_file(src / "head.safetensors")
    h = config.hidden_size
    with torch.no_grad():
        pooler.dense.weight.copy_(torch.eye(h) * EPSILON)
        pooler.dense.bias.zero_()
        classifier.weight.copy_(head["weight"] / EPSILON)
        classifier.bias.copy_(head["bias"])
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(src / "encoder")
    # CrossEncoder truncates the pair jointly to this length; the trial cut the query and the document separately
    tok.model_max_length = info["max_query_length"] + info["max_doc_length"] + 3
    tok.save_pretrained(out)


__all__ = ["ExportError", "export_student", "save_student", "student_info"]
