"""Exact activation patching, batched (the arithmetic paper's IE maps and per-neuron effects).

Sites are attention heads (``hook_z``, one head's slice) and whole MLPs (``mlp.hook_post``, all hidden neurons), each
at one prompt position. The value patched in is the counterfactual prompt's activation at the same site. Many sites
are patched in one forward pass: each site gets its own copy of the batch, stacked along the batch dimension
(variant-major: row ``s * b + i`` is site s on prompt i), and a hook per layer writes every copy's patch with one
indexed assignment — no Python loop over sites. Single neurons at the last position:
:func:`last_position_neuron_patching`. Only the last position's logits are formed (the metrics read nothing else),
and every hook moves what it writes to the activation's device, so models split over devices work.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.tracing import Tracer
from circuitflow.metrics import Metric
from circuitflow.models.contract import logits_on_prefix, prefix_cache

POSITION_NAMES = ("op1", "operator", "op2", "last")


@torch.no_grad()
def site_activations(tracer: Tracer, tokens: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(logits, per-layer ``z`` ``[b, p, head, d_head]``, per-layer ``post`` ``[b, p, d_mlp]``) of one run; each
    activation stays on its layer's device."""
    zs, posts = tracer.layer_hooks("z"), tracer.layer_hooks("mlp_post")
    logits, store = tracer.capture(tokens, {**zs, **posts})
    return logits, [store[key] for key in zs], [store[key] for key in posts]


def _full_length(batch: PairBatch) -> Tensor:
    """``[b]`` ones: the lengths of last-position logits ``[rows, 1, vocab]``; checks that no prompt is padded."""
    if bool((batch.lengths != batch.clean.shape[1]).any()):
        raise ValueError("patching needs unpadded prompt pairs of one token length: build them with pair_batches")
    return torch.ones_like(batch.lengths)


@torch.no_grad()
def patch_sites(tracer: Tracer, batch: PairBatch, layer: Tensor, unit: Tensor, pos: Tensor, kind: Tensor,
                metrics: dict[str, Metric], *, max_rows: int = 4096,
                corrupt: tuple[list[Tensor], list[Tensor]] | None = None) -> dict[str, Tensor]:
    """Patch each of S sites (one at a time) from ``batch.corrupt`` into ``batch.clean``; return ``{name: [S, b]}``
    in float64.

    Site s is ``(layer[s], unit[s], pos[s], kind[s])``: kind 0 = attention head ``unit``, 1 = the whole MLP
    (``unit`` ignored); ``pos`` is a token index. ``corrupt`` = (z, post) of ``batch.corrupt`` from
    :func:`site_activations` when already computed. Single neurons: :func:`last_position_neuron_patching`.
    """
    b = len(batch)
    batch = batch.to(tracer.device)
    ones = _full_length(batch)
    clean_logits = tracer.last_logits(batch.clean)
    if corrupt is None:
        _, z_corrupt, post_corrupt = site_activations(tracer, batch.corrupt)
    else:
        z_corrupt, post_corrupt = corrupt
    chunk = max(1, max_rows // b)
    results: dict[str, list[Tensor]] = {name: [] for name in metrics}
    for start in range(0, len(layer), chunk):
        sl = slice(start, start + chunk)
        n_sites = len(layer[sl])
        rows = lambda t: t[sl].repeat_interleave(b)  # noqa: E731  (variant-major rows)
        r_layer, r_unit, r_pos, r_kind = rows(layer), rows(unit), rows(pos), rows(kind)
        r_row, r_ex = torch.arange(n_sites * b), torch.arange(b).repeat(n_sites)

        def patch(source: Tensor, sel: Tensor, tensor: Tensor, hook) -> Tensor:
            row, ex, p, u = (t[sel].to(tensor.device) for t in (r_row, r_ex, r_pos, r_unit))
            source = source.to(tensor.device)  # a no-op: captured at this very hook
            if tensor.dim() == 4:  # hook_z [rows, pos, head, d_head]: one head
                tensor[row, p, u] = source[ex, p, u]
            else:  # mlp.hook_post [rows, pos, d_mlp]: the whole MLP
                tensor[row, p] = source[ex, p]
            return tensor

        hooks = []
        for i, la in enumerate(tracer.anatomy.layers):
            for role, k, source in (("z", 0, z_corrupt[i]), ("mlp_post", 1, post_corrupt[i])):
                sel = (r_layer == i) & (r_kind == k)
                if bool(sel.any()):
                    hooks.append((la.hooks[role], partial(patch, source, sel)))
        with tracer.bridge.hooks(fwd_hooks=hooks):
            logits = tracer.last_logits(batch.clean.repeat(n_sites, 1))
        for name, metric in metrics.items():
            results[name].append(metric(logits, clean_logits, ones, batch.labels).double().view(n_sites, b).cpu())
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
def last_position_neuron_patching(tracer: Tracer, batch: PairBatch, layer: int, neurons: Tensor, metric: Metric, *,
                                  max_rows: int = 8192) -> Tensor:
    """``[b, n]`` (float64): ``metric`` after patching each neuron of ``layer`` alone at the last position, from the
    corrupt prompt; many neurons per forward pass, each a copy of the batch.

    A patch at the last position cannot change earlier positions (causal attention). Where the bridge contract
    proved that a last-token forward on the prefix's key/value cache equals the full forward
    (``tracer.contract.prefix_cache``), the clean prefix runs once and each copy computes one token (``max_rows``
    copies' rows per pass); elsewhere each copy runs the whole prompt (``max_rows // pos`` rows per pass, the same
    number of tokens). Both are exact.
    """
    b, pos = batch.clean.shape
    batch = batch.to(tracer.device)
    ones = _full_length(batch)
    clean_logits = tracer.last_logits(batch.clean)
    _, _, post_corrupt = site_activations(tracer, batch.corrupt)
    target = post_corrupt[layer][:, -1]  # [b, d_mlp], on the layer's device
    cache = prefix_cache(tracer.bridge, batch.clean[:, :-1]) if tracer.contract.prefix_cache and pos > 1 else None
    chunk = max(1, (max_rows if cache is not None else max_rows // pos) // b)
    out = []
    for start in range(0, len(neurons), chunk):
        part = neurons[start : start + chunk].to(target.device)
        n = len(part)
        r_unit = part.repeat_interleave(b)  # variant-major: row v * b + i is neuron part[v] on prompt i
        values = target[torch.arange(b, device=target.device).repeat(n), r_unit]

        def patch(tensor, hook):
            rows = torch.arange(len(r_unit), device=tensor.device)
            tensor[rows, -1, r_unit.to(tensor.device)] = values.to(tensor.device)
            return tensor

        with tracer.bridge.hooks(fwd_hooks=[(tracer.anatomy.layers[layer].hooks["mlp_post"], patch)]):
            if cache is not None:
                logits = logits_on_prefix(tracer.bridge, cache, batch.clean[:, -1:], n)
            else:
                logits = tracer.last_logits(batch.clean.repeat(n, 1))
        out.append(metric(logits, clean_logits, ones, batch.labels).double().view(n, b).T.cpu())
    return torch.cat(out, dim=1)
