"""Neuron attribution: attribution patching on MLP hidden neurons (``mlp.hook_post``), per example.

For neuron n of layer l with activation a_n, the score of example i is Δ_n · ∂m_i/∂a_n summed over the chosen
positions (the arithmetic paper uses the last position and the IE metric), with Δ_n = reference − clean activation
(patching: the counterfactual prompt's; zero: 0; mean: a given mean). ``EAP-IG-inputs`` averages the gradient over
runs whose input embedding is interpolated between the reference and the clean one, as for edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitflow.circuits.attribution import input_alphas
from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.tracing import Tracer
from circuitflow.metrics import Metric


@torch.no_grad()
def post_activations(tracer: Tracer, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, input-node output ``[b, p, d_model]``, MLP hidden activations ``[b, p, n_layers, d_mlp]``)."""
    posts = tracer.layer_hooks("mlp_post")
    logits, store = tracer.capture(tokens, {"input": tracer.anatomy.input_hook, **posts})
    return logits, store["input"], torch.stack([store[key].to(tracer.device) for key in posts], dim=2)


def neuron_attribution(
    bridge,
    batches: Sequence[PairBatch],
    metric: Metric,
    method: Literal["EAP", "EAP-IG-inputs", "clean-corrupted"] = "EAP",
    intervention: Literal["patching", "zero", "mean"] = "patching",
    ig_steps: int = 5,
    positions: Literal["last", "all"] = "last",
    post_means: Tensor | None = None,
    tracer: Tracer | None = None,
    progress: bool = True,
) -> Tensor:
    """``[N, n_layers, d_mlp]``: each example's attribution score for every MLP neuron (see the module docstring).

    ``post_means`` ``[n_layers, d_mlp]`` is the mean activation for ``intervention="mean"`` (the input node then
    moves towards its mean too).
    """
    tracer = tracer or Tracer(bridge)
    a = tracer.anatomy
    out = []
    for batch in tqdm(batches, desc=f"neurons ({method})", disable=not progress, mininterval=5):
        batch = batch.to(tracer.device)
        clean_logits, clean_in, clean_post = post_activations(tracer, batch.clean)
        if intervention == "patching":
            _, ref_in, ref_post = post_activations(tracer, batch.corrupt)
        elif intervention == "zero":
            ref_in, ref_post = torch.zeros_like(clean_in), torch.zeros_like(clean_post)
        elif intervention == "mean":
            if post_means is None:
                raise ValueError("intervention='mean' needs post_means [n_layers, d_mlp]")
            ref_in = clean_in.mean((0, 1), keepdim=True).expand_as(clean_in)
            ref_post = post_means.to(clean_post)[None, None].expand_as(clean_post)
        else:
            raise ValueError(f"unknown intervention {intervention!r}: use patching, zero or mean")
        delta_post, delta_in = ref_post - clean_post, ref_in - clean_in
        if positions == "last":
            keep = torch.zeros(clean_post.shape[:2], device=tracer.device, dtype=clean_post.dtype)
            keep[torch.arange(len(batch)), batch.lengths - 1] = 1
            delta_post = delta_post * keep[:, :, None, None]
        scores = torch.zeros(len(batch), a.n_layers, a.d_mlp, device=tracer.device, dtype=torch.float64)
        alphas = input_alphas(method, ig_steps)
        for alpha in alphas:
            grads: dict[int, Tensor] = {}

            def edit(tensor, hook, beta=1 - alpha):
                return (tensor + beta * delta_in.to(tensor.device)).detach().requires_grad_(True)

            def keep_grad(layer, grad, hook):
                grads[layer] = grad.detach()

            bwd = [(la.hooks["mlp_post"], partial(keep_grad, layer)) for layer, la in enumerate(a.layers)]
            with torch.enable_grad(), bridge.hooks(fwd_hooks=[(a.input_hook, edit)], bwd_hooks=bwd):
                value = metric(bridge(batch.clean), clean_logits, batch.lengths, batch.labels)
                if not torch.isfinite(value).all():
                    raise FloatingPointError("the metric is NaN or infinite on some prompts")
                value.sum().backward()
            grad = torch.stack([grads[i].to(tracer.device) for i in range(a.n_layers)], dim=2)
            scores += (delta_post * grad).sum(1).double() / len(alphas)
        out.append(scores.cpu())
    return torch.cat(out)
