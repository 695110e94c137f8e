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


def old_ie(logits, clean_logits, lengths, labels):
    """The IE as first written: the clean logits repeated per stacked row, one float64 softmax per row."""
    rows = torch.arange(len(logits))
    p = torch.softmax(clean_logits[rows, lengths - 1].double(), -1)
    p_star = torch.softmax(logits[rows, lengths - 1].double(), -1)
    pick = lambda v, c: v[rows, labels[:, c]]  # noqa: E731
    return 0.5 * ((pick(p_star, 1) - pick(p, 1)) / pick(p, 1) + (pick(p, 0) - pick(p_star, 0)) / pick(p_star, 0))


def test_stacked_variants_use_the_clean_side_once_per_prompt_and_equal_the_old_formula():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 50, generator=gen, dtype=torch.float64) * 5
    variants = torch.randn(3 * 2, 3, 50, generator=gen, dtype=torch.float64) * 5  # 3 variants, variant-major
    variants[0, 2, 7] = -200.0  # a flipped confident answer: P*(r) ~ 1e-88
    lengths, labels = torch.tensor([3, 2]), torch.tensor([[7, 8], [9, 10]])
    rep = lambda t: t.repeat(3, *([1] * (t.dim() - 1)))  # noqa: E731
    expected = old_ie(variants, rep(clean), rep(lengths), rep(labels))
    got = ie(variants, clean, lengths, labels)
    assert got.dtype == torch.float64 and bool(torch.isfinite(got).all()) and float(got[0]) > 1e80
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)
    for metric in (logit_diff, kl, prob, nl, accuracy):
        torch.testing.assert_close(metric(variants, clean, lengths, labels).double(),
                                   metric(variants, rep(clean), rep(lengths), rep(labels)).double())
    with pytest.raises(ValueError, match="not a whole number"):
        ie(variants[:5], clean, lengths, labels)


def test_half_precision_logits_are_upcast_before_any_arithmetic():
    """bf16 logits at scale 20 (spacing 0.125): the normalized logit 19.875 / 20 and the mean of many logit
    differences are exact in float32 but round in bf16 arithmetic."""
    logits = torch.zeros(1, 1, 3, dtype=torch.bfloat16)
    logits[0, 0] = torch.tensor([19.875, 20.0, 0.0625])
    one = (torch.tensor([1]), torch.tensor([[0, 2]]))
    assert float(nl(logits, logits, *one)) == pytest.approx(19.875 / 20.0, rel=1e-7)  # bf16: 0.9922 or 0.9961
    assert float(logit_diff(logits, logits, *one)) == 19.8125
    many = logits.repeat(64, 1, 1)
    labels = torch.tensor([[0, 2]]).repeat(64, 1)
    assert float(logit_diff(many, many, torch.ones(64, dtype=torch.long), labels).sum()) == 64 * 19.8125
    assert logit_diff(logits, logits, *one).dtype == torch.float32


def test_a_bf16_model_keeps_small_differences(tmp_path):
    """On a bf16 model the metrics equal float64 arithmetic on its bf16 logits (shifted to scale 20 by a constant,
    which changes neither the answer nor the logit difference)."""
    from circuitflow.circuits import Tracer
    from circuitflow.models import ModelHandle, load_bridge
    from tests.conftest import save_tiny_model

    bridge = load_bridge(ModelHandle("m", str(save_tiny_model("gpt_neox", tmp_path / "m"))), device="cpu",
                         dtype="bfloat16")
    tracer = Tracer(bridge)
    tokens = torch.randint(4, 25, (4, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = tracer.last_logits(tokens) + 20  # bf16, scale 20
    assert logits.dtype == torch.bfloat16
    exact = logits[:, 0].double()
    top = exact.max(-1, keepdim=True).values
    runner_up = torch.where(exact < top, exact, -torch.inf).argmax(-1)  # the largest logit below the top one
    labels = torch.stack([exact.argmax(-1), runner_up], 1)
    ones = torch.ones(4, dtype=torch.long)
    rows = torch.arange(4)
    diff = exact[rows, labels[:, 0]] - exact[rows, labels[:, 1]]
    assert bool((diff > 0).all()) and float(diff.min()) < 0.5  # small differences at scale 20
    torch.testing.assert_close(logit_diff(logits, logits, ones, labels).double(), diff, rtol=0, atol=0)
    ratio = exact[rows, labels[:, 0]] / exact.max(-1).values
    torch.testing.assert_close(nl(logits, logits, ones, labels).double(), ratio, rtol=1e-7, atol=0)
