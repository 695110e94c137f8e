"""Exact activation patching, batched (the arithmetic paper's IE maps and per-neuron effects).

Sites are attention heads (``hook_z``, one head's slice) and whole MLPs (``mlp.hook_post``, all hidden neurons), each
at one prompt position. The value patched in is the counterfactual prompt's activation at the same site. Many sites
are patched in one forward pass: each site gets its own copy of the batch, stacked along the batch dimension, and a
hook per layer writes every copy's patch with one indexed assignment — no Python loop over sites. Single neurons at
the last position are patched on the clean prefix's key/value cache (:func:`last_position_neuron_patching`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.tracing import Tracer, metric_values
from circuitflow.metrics import Metric

POSITION_NAMES = ("op1", "operator", "op2", "last")


@torch.no_grad()
def site_activations(tracer: Tracer, tokens: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(logits, per-layer ``z`` ``[b, p, head, d_head]``, per-layer ``post`` ``[b, p, d_mlp]``) of one run."""
    zs, posts = tracer.layer_hooks("z"), tracer.layer_hooks("mlp_post")
    logits, store = tracer.capture(tokens, {**zs, **posts})
    return logits, [store[key] for key in zs], [store[key] for key in posts]


@torch.no_grad()
def patch_sites(tracer: Tracer, batch: PairBatch, layer: Tensor, unit: Tensor, pos: Tensor, kind: Tensor,
                metrics: dict[str, Metric], max_rows: int = 4096,
                corrupt: tuple[list[Tensor], list[Tensor]] | None = None) -> dict[str, Tensor]:
    """Patch each of S sites (one at a time) from ``batch.corrupt`` into ``batch.clean``; return ``{name: [S, b]}``.

    Site s is ``(layer[s], unit[s], pos[s], kind[s])``: kind 0 = attention head ``unit``, 1 = the whole MLP
    (``unit`` ignored); ``pos`` is a token index. Single neurons: :func:`last_position_neuron_patching`.
    """
    b = len(batch)
    batch = batch.to(tracer.device)
    clean_logits = tracer.bridge(batch.clean)
    if corrupt is None:
        _, z_corrupt, post_corrupt = site_activations(tracer, batch.corrupt)
    else:
        z_corrupt, post_corrupt = corrupt
    chunk = max(1, max_rows // b)
    results: dict[str, list[Tensor]] = {name: [] for name in metrics}
    for start in range(0, len(layer), chunk):
        sl = slice(start, start + chunk)
        n_sites = len(layer[sl])
        rows = lambda t: t[sl].to(tracer.device).repeat_interleave(b)  # noqa: E731
        r_layer, r_unit, r_pos, r_kind = rows(layer), rows(unit), rows(pos), rows(kind)
        r_ex = torch.arange(b, device=tracer.device).repeat(n_sites)

        def patch_z(i, tensor, hook):
            sel = (r_layer == i) & (r_kind == 0)
            tensor[sel, r_pos[sel], r_unit[sel]] = z_corrupt[i][r_ex[sel], r_pos[sel], r_unit[sel]]
            return tensor

        def patch_post(i, tensor, hook):
            sel = (r_layer == i) & (r_kind == 1)
            tensor[sel, r_pos[sel]] = post_corrupt[i][r_ex[sel], r_pos[sel]]
            return tensor

        hooks = []
        for i, la in enumerate(tracer.anatomy.layers):
            if bool(((r_layer == i) & (r_kind == 0)).any()):
                hooks.append((la.hooks["z"], partial(patch_z, i)))
            if bool(((r_layer == i) & (r_kind == 1)).any()):
                hooks.append((la.hooks["mlp_post"], partial(patch_post, i)))
        with tracer.bridge.hooks(fwd_hooks=hooks):
            logits = tracer.bridge(batch.clean.repeat(n_sites, 1))
        for name, metric in metrics.items():
            results[name].append(metric_values(metric, logits, clean_logits, batch).float().cpu())
    return {name: torch.cat(parts) for name, parts in results.items()}


def component_sites(n_layers: int, n_heads: int, positions: list[int]) -> dict[str, Tensor]:
    """Every head and whole MLP at every position: ``layer, unit, pos, kind`` (kind 0 head, 1 MLP) as tensors."""
    layer, unit, pos, kind = [], [], [], []
    for i in range(n_layers):
        for u in range(n_heads + 1):
            for p in positions:
                layer.append(i), unit.append(min(u, n_heads - 1)), pos.append(p), kind.append(int(u == n_heads))
    return {k: torch.tensor(v) for k, v in dict(layer=layer, unit=unit, pos=pos, kind=kind).items()}


@torch.no_grad()
def last_position_neuron_patching(tracer: Tracer, batch: PairBatch, layer: int, neurons: Tensor, metric: Metric,
                                  max_rows: int = 8192) -> Tensor:
    """``[b, n]``: ``metric`` after patching each neuron of ``layer`` alone at the last position, from the corrupt
    prompt. A patch at the last position cannot change earlier positions (causal attention), so the clean prefix is
    run once and its key/value cache reused: each variant computes one token, and logits only there."""
    import copy

    b = len(batch)
    batch = batch.to(tracer.device)
    clean_logits = tracer.bridge(batch.clean)[:, -1:]
    _, _, post_corrupt = site_activations(tracer, batch.corrupt)
    target = post_corrupt[layer][:, -1]  # [b, d_mlp]
    prefix = tracer.bridge.original_model(batch.clean[:, :-1], use_cache=True).past_key_values
    ones = torch.ones(b, dtype=torch.long, device=tracer.device)
    chunk = max(1, max_rows // b)
    out = []
    for start in range(0, len(neurons), chunk):
        part = neurons[start : start + chunk].to(tracer.device)
        n = len(part)
        r_ex = torch.arange(b, device=tracer.device).repeat_interleave(n)  # example-major, as the cache repeats
        r_unit = part.repeat(b)

        def patch(tensor, hook):
            tensor[torch.arange(len(r_ex), device=tensor.device), 0, r_unit] = target[r_ex, r_unit]
            return tensor

        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(n)
        with tracer.bridge.hooks(fwd_hooks=[(tracer.anatomy.layers[layer].hooks["mlp_post"], patch)]):
            logits = tracer.bridge(batch.clean[:, -1:].repeat_interleave(n, 0), past_key_values=cache)
        rep = lambda t: t.repeat_interleave(n, 0)  # noqa: E731
        out.append(metric(logits, rep(clean_logits), rep(ones), rep(batch.labels)).float().view(b, n).cpu())
    return torch.cat(out, dim=1)
