"""Metrics on hand-made logits give the numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from circuitflow.metrics import accuracy, get_metric, ie, kl, logit_diff, nl, prob

# two prompts of 3 tokens over a vocabulary of 3; the first prompt is 2 tokens long (right-padded)
CLEAN = torch.zeros(2, 3, 3)
CLEAN[0, 1] = torch.tensor([math.log(2.0), 0.0, 0.0])  # P = (1/2, 1/4, 1/4)
CLEAN[1, 2] = torch.tensor([0.0, math.log(3.0), 0.0])  # P = (1/5, 3/5, 1/5)
LENGTHS = torch.tensor([2, 3])
LABELS = torch.tensor([[0, 1], [1, 2]])  # (r, r')


def test_logit_difference_and_probability():
    assert logit_diff(CLEAN, CLEAN, LENGTHS, LABELS).tolist() == pytest.approx([math.log(2.0), math.log(3.0)])
    assert prob(CLEAN, CLEAN, LENGTHS, LABELS).tolist() == pytest.approx([0.5, 0.6])
    assert accuracy(CLEAN, CLEAN, LENGTHS, LABELS).tolist() == [1.0, 1.0]


def test_indirect_effect_is_zero_without_change_and_known_after_one():
    assert ie(CLEAN, CLEAN, LENGTHS, LABELS).tolist() == pytest.approx([0.0, 0.0])
    patched = CLEAN.clone()
    patched[0, 1] = torch.tensor([0.0, math.log(2.0), 0.0])  # P* = (1/4, 1/2, 1/4)
    # ½[(P*(r') − P(r'))/P(r') + (P(r) − P*(r))/P*(r)] = ½[(1/2 − 1/4)/(1/4) + (1/2 − 1/4)/(1/4)] = 1
    assert float(ie(patched, CLEAN, LENGTHS, LABELS)[0]) == pytest.approx(1.0)
    flipped = CLEAN.clone()
    flipped[0, 1] = torch.tensor([-100.0, 100.0, 0.0])  # P*(r) ~ 1e-87: finite in float64
    assert math.isfinite(float(ie(flipped, CLEAN, LENGTHS, LABELS)[0]))


def test_normalized_logit_and_kl():
    logits = torch.zeros(1, 1, 3)
    logits[0, 0] = torch.tensor([2.0, 4.0, 1.0])
    one = (torch.tensor([1]), torch.tensor([[0, 1]]))
    assert float(nl(logits, logits, *one)) == pytest.approx(0.5)
    assert float(kl(logits, logits, *one)) == pytest.approx(0.0, abs=1e-7)
    uniform = torch.zeros(1, 1, 3)
    p = torch.softmax(logits[0, 0], -1)
    assert float(kl(uniform, logits, *one)) == pytest.approx(float((p * (p.log() - math.log(1 / 3))).sum()))


def test_unknown_metric_names_the_choices():
    with pytest.raises(ValueError, match="logit_diff"):
        get_metric("logit_difference")
