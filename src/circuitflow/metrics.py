"""Per-example metrics on model outputs (``docs/definitions.md#metrics``).

Every metric has the signature ``metric(logits, clean_logits, input_lengths, labels) -> [batch]``:
``logits`` and ``clean_logits`` are ``[batch, pos, vocab]``, ``input_lengths`` ``[batch]`` gives the number of real
tokens of each prompt (the answer is predicted at position ``length - 1``), and ``labels`` ``[batch, 2]`` holds the
clean answer token ``r`` and the counterfactual answer token ``r'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Metric = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
MetricName = Literal["logit_diff", "kl", "prob", "ie", "nl", "accuracy"]


def last_logits(logits: Tensor, input_lengths: Tensor) -> Tensor:
    """``[batch, vocab]``: the logits at each prompt's last real position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, input_lengths.to(logits.device) - 1]


def _pick(values: Tensor, labels: Tensor, column: int) -> Tensor:
    return values.gather(-1, labels[:, column : column + 1].to(values.device)).squeeze(-1)


def logit_diff(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """logit[r] - logit[r'] at the last position."""
    last = last_logits(logits, input_lengths)
    return _pick(last, labels, 0) - _pick(last, labels, 1)


def kl(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """KL(clean || current) of the next-token distributions at the last position (0 on the clean run)."""
    log_p = torch.log_softmax(last_logits(clean_logits, input_lengths).float(), -1)
    log_q = torch.log_softmax(last_logits(logits, input_lengths).float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def prob(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """Softmax probability of the clean answer r at the last position."""
    return _pick(torch.softmax(last_logits(logits, input_lengths).float(), -1), labels, 0)


def ie(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """The arithmetic paper's indirect effect (eq. 1): with P the clean and P* the intervened distribution,
    IE = ½[(P*(r') − P(r'))/P(r') + (P(r) − P*(r))/P*(r)]. It is 0 when nothing changes."""
    # float64: a patch that flips a confident answer gives P*(r) ~ 1e-40, which float32 rounds to 0 (IE = inf)
    p = torch.softmax(last_logits(clean_logits, input_lengths).double(), -1)
    p_star = torch.softmax(last_logits(logits, input_lengths).double(), -1)
    r_term = (_pick(p, labels, 0) - _pick(p_star, labels, 0)) / _pick(p_star, labels, 0)
    r_prime_term = (_pick(p_star, labels, 1) - _pick(p, labels, 1)) / _pick(p, labels, 1)
    return 0.5 * (r_prime_term + r_term)


def nl(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """The arithmetic paper's normalized logit: logit[r] / max_j logit[j] at the last position."""
    last = last_logits(logits, input_lengths).float()
    return _pick(last, labels, 0) / last.max(-1).values


def accuracy(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """1.0 where the argmax at the last position is the clean answer r, else 0.0."""
    last = last_logits(logits, input_lengths)
    return (last.argmax(-1) == labels[:, 0].to(last.device)).float()


METRICS: dict[str, Metric] = dict(logit_diff=logit_diff, kl=kl, prob=prob, ie=ie, nl=nl, accuracy=accuracy)


def get_metric(name: str) -> Metric:
    """The metric called ``name``; a ValueError lists the known names."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return METRICS[name]
