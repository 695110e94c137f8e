"""Per-example metrics on model outputs (``docs/definitions.md#metrics``).

Every metric has the signature ``metric(logits, clean_logits, input_lengths, labels) -> [rows]``: ``logits`` is
``[rows, pos, vocab]``, ``clean_logits`` ``[b, pos', vocab]``, ``input_lengths`` ``[b]`` gives the number of real
tokens of each prompt (the answer is predicted at position ``length - 1``) and ``labels`` ``[b, 2]`` holds the clean
answer token ``r`` and the counterfactual answer token ``r'``. ``logits`` may stack n variants of the b prompts
(``rows = n * b``, variant-major: row i belongs to prompt ``i % b``); the clean side is then computed once per
prompt, not once per row. Logits are upcast to at least float32 before any arithmetic, so bf16/fp16 models do not
round small differences away; probabilities of the IE are formed in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Metric = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
MetricName = Literal["logit_diff", "kl", "prob", "ie", "nl", "accuracy"]


def tile_rows(values: Tensor, rows: int) -> Tensor:
    """``values`` ``[b, ...]`` repeated variant-major to ``[rows, ...]`` (row i is ``values[i % b]``)."""
    b = values.shape[0]
    if rows % b:
        raise ValueError(f"{rows} stacked rows are not a whole number of variants of {b} prompts")
    return values.repeat(rows // b, *([1] * (values.dim() - 1)))


def _upcast(values: Tensor) -> Tensor:
    return values.to(torch.promote_types(values.dtype, torch.float32))


def last_logits(logits: Tensor, input_lengths: Tensor) -> Tensor:
    """``[rows, vocab]``: the logits at each prompt's last real position, upcast to at least float32."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return _upcast(logits[rows, tile_rows(input_lengths.to(logits.device), logits.shape[0]) - 1])


def _pick(values: Tensor, labels: Tensor, column: int) -> Tensor:
    index = tile_rows(labels[:, column : column + 1].to(values.device), values.shape[0])
    return values.gather(-1, index).squeeze(-1)


def _log_probs(last: Tensor, labels: Tensor) -> Tensor:
    """``[rows, 2]`` log-softmax of ``last`` ``[rows, vocab]`` at (r, r'), without a float64 ``[rows, vocab]`` copy."""
    index = tile_rows(labels.to(last.device), last.shape[0])
    return last.gather(-1, index) - torch.logsumexp(last, -1, keepdim=True)


def logit_diff(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """logit[r] - logit[r'] at the last position."""
    last = last_logits(logits, input_lengths)
    return _pick(last, labels, 0) - _pick(last, labels, 1)


def kl(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """KL(clean || current) of the next-token distributions at the last position (0 on the clean run)."""
    log_p = torch.log_softmax(last_logits(clean_logits, input_lengths), -1)  # [b, vocab]
    log_q = torch.log_softmax(last_logits(logits, input_lengths), -1)  # [rows, vocab]
    log_q = log_q.view(-1, *log_p.shape)  # [n, b, vocab]: the clean side broadcasts, it is never repeated
    return (log_p.exp() * (log_p - log_q)).sum(-1).flatten()


def prob(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """Softmax probability of the clean answer r at the last position."""
    return _log_probs(last_logits(logits, input_lengths), labels)[:, 0].exp()


def ie(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """The arithmetic paper's indirect effect (eq. 1): with P the clean and P* the intervened distribution,
    IE = ½[(P*(r') − P(r'))/P(r') + (P(r) − P*(r))/P*(r)]. It is 0 when nothing changes."""
    # log-probabilities in (at least) float32, probabilities in float64: a patch that flips a confident answer gives
    # P*(r) ~ 1e-40, which float32 rounds to 0 (IE = inf); P(r), P(r') are computed once per prompt
    p = tile_rows(_log_probs(last_logits(clean_logits, input_lengths), labels).double().exp(), logits.shape[0])
    p_star = _log_probs(last_logits(logits, input_lengths), labels).double().exp()
    r_term = (p[:, 0] - p_star[:, 0]) / p_star[:, 0]
    r_prime_term = (p_star[:, 1] - p[:, 1]) / p[:, 1]
    return 0.5 * (r_prime_term + r_term)


def nl(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """The arithmetic paper's normalized logit: logit[r] / max_j logit[j] at the last position."""
    last = last_logits(logits, input_lengths)
    return _pick(last, labels, 0) / last.max(-1).values


def accuracy(logits: Tensor, clean_logits: Tensor, input_lengths: Tensor, labels: Tensor) -> Tensor:
    """1.0 where the argmax at the last position is the clean answer r, else 0.0."""
    last = last_logits(logits, input_lengths)
    return (last.argmax(-1) == tile_rows(labels[:, 0].to(last.device), last.shape[0])).float()


METRICS: dict[str, Metric] = dict(logit_diff=logit_diff, kl=kl, prob=prob, ie=ie, nl=nl, accuracy=accuracy)


def get_metric(name: str) -> Metric:
    """The metric called ``name``; a ValueError lists the known names."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return METRICS[name]
