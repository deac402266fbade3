"""Training (``core/training.py``): determinism, resuming with gradient accumulation, divergence, no device reads per step."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from ranksweep.core import Trial, prepare


def test_same_seed_same_trial_other_seed_differs(tmp_path, tiny_model):
    cfg = tiny_config(tmp_path, tiny_model, budget_docs=32, output_dir=None)
    p = prepare(cfg)
    runs = []
    for seed in (3, 3, 4):
        t = Trial(cfg.replace(seed=seed), p)
        t.train_until(32)
        runs.append(torch.cat([x.detach().flatten() for x in t.model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_a_checkpoint_resumes_the_same_trial_with_gradient_accumulation(tmp_path, tiny_model):
    # 4 queries x 4 docs x 2 micro-batches = 32 docs per optimizer step; stop after the first, resume from its state
    cfg = tiny_config(tmp_path, tiny_model, budget_docs=64, eval_every_docs=32, output_dir=None, **{"optim.grad_accum": 2})
    p = prepare(cfg)
    whole = Trial(cfg, p)
    whole.train_until(64)
    first = Trial(cfg, p)
    first.train_until(32)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = Trial(cfg, p)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.docs_seen == 32 and resumed.trainer.steps == 1
    resumed.train_until(64)
    assert (resumed.docs_seen, resumed.trainer.steps) == (whole.docs_seen, whole.trainer.steps) == (64, 2)
    assert all(torch.equal(a, b) for a, b in zip(whole.model.parameters(), resumed.model.parameters()))
    assert resumed.trainer.sched.get_last_lr() == whole.trainer.sched.get_last_lr()
    assert not all(torch.equal(a, b) for a, b in zip(whole.model.parameters(), first.model.parameters()))


def test_a_diverged_student_stops_with_a_clear_error_and_keeps_finished_evaluations(tmp_path, tiny_model):
    cfg = tiny_config(tmp_path, tiny_model, budget_docs=96, eval_every_docs=32)
    t = Trial(cfg)
    t.train_until(32)
    t.evaluate()
    with torch.no_grad():  # the student diverges: every score, so every loss, is NaN from here on
        for p in t.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss.*docs_seen=32"):
        t.train_until(96)
    lines = (tmp_path / "trial" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["docs_seen"] == 32


def test_training_reads_nothing_back_from_the_device_per_step(tmp_path, tiny_model, monkeypatch):
    """Within a micro-step nothing is read back from a tensor (``item``, ``float``, ``bool``, ``tolist``): on a GPU each
    would wait for the device. The loss sums stay tensors; ``train_until`` reads them once, to check they are finite."""
    t = Trial(tiny_config(tmp_path, tiny_model, budget_docs=96, eval_every_docs=96, augment={"in_batch": True}, output_dir=None))
    reads = []
    real_step = type(t.trainer)._micro_step
    counting = {"on": False}

    def spy(name):
        real = getattr(torch.Tensor, name)

        def wrapped(self, *a, **kw):
            if counting["on"]:
                reads.append(name)
            return real(self, *a, **kw)
        return wrapped

    for name in ("item", "__float__", "__bool__", "tolist", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))

    def step(self, n):
        counting["on"] = True
        try:
            real_step(self, n)
        finally:
            counting["on"] = False

    monkeypatch.setattr(type(t.trainer), "_micro_step", step)
    t.train_until(96)
    assert t.trainer.steps == 6 and reads == []
    m = t.trainer.metrics()
    assert np.isfinite(m["train/loss"]) and np.isfinite(m["train/in_batch_lce"])
