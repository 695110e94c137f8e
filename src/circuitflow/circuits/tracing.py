"""Forward and backward passes of a ``TransformerBridge`` with the circuit engine's hooks.

:class:`Tracer` does three things, all on the ordinary (unsplit) forward of the bridge:

* :meth:`Tracer.outputs` — every upstream node's output in d_model space, ``[batch, pos, n_up, d_model]``
  (the input embedding, each head's ``z_h @ W_O[h]``, each MLP's output);
* :meth:`Tracer.gradient_pass` — one forward/backward; the gradient at every downstream input (each head's q,
  each key/value head's k and v, each MLP input, the logits) is rebuilt from the d_head-wide gradients at
  ``hook_q/k/v`` through ``W_Q/K/V`` and the norm's vector-Jacobian product (see :mod:`.anatomy`), and dotted with
  the upstream differences Δ straight away, so scores accumulate in a ``[n_up, n_down]`` matrix and no
  ``[batch, pos, head, d_head, d_model]`` tensor is ever formed; the scores can keep positions apart
  (position-aware circuits), split each node's score over its output dimensions (neuron-level circuits) and score
  the MLPs' hidden neurons (``hook_mlp_post``, MLP-neuron-level circuits);
* :meth:`Tracer.run_masked` — a forward where every downstream input v receives Σ Δ_u over the upstream nodes u
  whose edge u → v is masked out (circuit evaluation and exact edge patching), optionally at single positions, on
  single output dimensions of nodes, or with MLP hidden neurons set to their reference; several masks run at once,
  stacked in the batch dimension.

An MLP's output W_out · post + b_out is linear in its hidden activations ``post``, so setting the hidden neurons n
outside a circuit to their reference changes it by Σ_n W_out[n] (ref_post_n − post_n): the MLP's Δ restricted to those
neurons. Under patching and mean interventions the node's Δ is that sum over all n; under zero ablation the node's
reference is 0 while every post_n = 0 still leaves b_out, so at hidden-neuron level the bias stays with the node.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import Tensor

from circuitflow.circuits.anatomy import Anatomy, norm_vjp, normed_shift
from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.graph import Graph
from circuitflow.metrics import Metric
from circuitflow.models.contract import BridgeContractError, bridge_contract, input_device

Intervention = Literal["patching", "zero", "mean", "mean-positional"]
INTERVENTIONS = ("patching", "zero", "mean", "mean-positional")

Edit = tuple[str, slice, float]  # (hook name, upstream nodes, beta): add beta * Σ_{u in nodes} Δ_u at that hook
# largest |actual − Σ Δ_u| / max |actual| of a node input that :func:`check_additive` lets through: rounding noise
# (HF computes some norms and attention in float32 even in a float64 model) is far below, a rescaled block output
# (Gemma-2/3's post-norms: 0.2–1) far above
ADDITIVE_TOLERANCE = {torch.float64: 1e-3, torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.1}


def head_outputs(W_O: Tensor, z: Tensor) -> Tensor:
    """Each head's write into the residual stream, ``[batch, pos, head, d_model]``, from ``z`` ``[batch, pos, head,
    d_head]`` and ``W_O`` ``[head, d_head, d_model]`` (the output bias belongs to no head)."""
    return torch.einsum("bphe,hed->bphd", z, W_O)


class Tracer:
    """The circuit engine's passes over one bridge (see the module docstring)."""

    def __init__(self, bridge, anatomy: Anatomy | None = None):
        self.bridge = bridge
        self.anatomy = anatomy or Anatomy.from_bridge(bridge)
        self.contract = bridge_contract(bridge, self.anatomy.hook_names)  # raises BridgeContractError
        a = self.anatomy
        self.shape = Graph.empty(a.n_layers, a.n_heads, a.n_kv_heads, a.parallel)
        # where tokens go and the engine's buffers and scores live; on a model split over devices (device_map) every
        # hook moves what it adds to its activation's device and what it keeps back here
        self.device = input_device(bridge)
        check_additive(self)  # raises BridgeContractError

    # ------------------------------------------------------------------ activations of plain runs
    @torch.no_grad()
    def capture(self, tokens: Tensor, names: dict[str, str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits ``[batch, pos, vocab]`` and the activations at ``names`` (key -> hook name) of one forward pass."""
        store: dict[str, Tensor] = {}

        def keep(key, tensor, hook):
            store[key] = tensor.detach()

        with self.bridge.hooks(fwd_hooks=[(hook, partial(keep, key)) for key, hook in names.items()]):
            logits = self.bridge(tokens.to(self.device))
        return logits, store

    def last_logits(self, tokens: Tensor) -> Tensor:
        """``[batch, 1, vocab]``: the logits at the last position of unpadded ``tokens`` ``[batch, pos]`` (HF's
        ``logits_to_keep=1`` where the bridge contract found it exact: no ``[batch, pos, vocab]`` tensor)."""
        tokens = tokens.to(self.device)
        if self.contract.logits_to_keep:
            return self.bridge(tokens, logits_to_keep=1)
        return self.bridge(tokens)[:, -1:]

    def layer_hooks(self, role: str) -> dict[str, str]:
        """``{f"{role}{layer}": hook name}`` of one role (``z``, ``mlp_post``, ``resid_in``, ...) in every layer."""
        return {f"{role}{layer}": la.hooks[role] for layer, la in enumerate(self.anatomy.layers)}

    @torch.no_grad()
    def outputs(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(logits ``[batch, pos, vocab]``, upstream outputs ``[batch, pos, n_up, d_model]``) of a clean run."""
        logits, store = self.capture(tokens, {"input": self.anatomy.input_hook, **self.layer_hooks("z"),
                                              **self.layer_hooks("mlp_out")})
        parts = [store["input"].unsqueeze(2)]
        for layer, la in enumerate(self.anatomy.layers):
            parts += [head_outputs(la.W_O, store[f"z{layer}"]), store[f"mlp_out{layer}"].unsqueeze(2)]
        return logits, torch.cat([part.to(self.device) for part in parts], dim=2)

    @torch.no_grad()
    def reference(self, batch: PairBatch, intervention: Intervention, means: Tensor | None = None, *,
                  what: str = "means (Tracer.means") -> Tensor:
        """What each upstream node is replaced with, broadcastable to ``[batch, pos, n_up, d_model]``: the corrupt
        run's outputs (patching), zeros, or means from :meth:`means` (``[1 or pos, n_up, d_model]``; ``what`` names
        them in errors)."""
        if intervention == "patching":
            return self.outputs(batch.corrupt)[1]
        if intervention == "zero":
            return torch.zeros(1, 1, self.shape.n_up, self.anatomy.d_model, device=self.device,
                               dtype=self.anatomy.layers[0].W_O.dtype)
        if intervention in ("mean", "mean-positional"):
            if means is None:
                raise ValueError(f"intervention {intervention!r} needs {what} on an intervention dataset)")
            if intervention == "mean-positional" and means.shape[0] != batch.clean.shape[1]:
                raise ValueError(f"mean-positional means cover {means.shape[0]} positions but the prompts have "
                                 f"{batch.clean.shape[1]}: compute them on prompts of the same token length")
            return means.unsqueeze(0).to(self.device)
        raise ValueError(f"unknown intervention {intervention!r}: use one of {', '.join(INTERVENTIONS)}")

    @torch.no_grad()
    def hidden(self, tokens: Tensor) -> Tensor:
        """The MLPs' hidden activations (``hook_mlp_post``) of a clean run, ``[batch, pos, n_layers, d_mlp]``."""
        posts = self.layer_hooks("mlp_post")
        store = self.capture(tokens, posts)[1]
        return torch.stack([store[key].to(self.device) for key in posts], dim=2)

    @torch.no_grad()
    def hidden_reference(self, batch: PairBatch, intervention: Intervention, hidden_means: Tensor | None = None
                         ) -> Tensor:
        """What each MLP hidden neuron is replaced with, broadcastable to ``[batch, pos, n_layers, d_mlp]``: the
        corrupt run's activations (patching), zeros, or means from :meth:`hidden_means`."""
        if intervention == "patching":
            return self.hidden(batch.corrupt)
        if intervention == "zero":
            a = self.anatomy
            return torch.zeros(1, 1, a.n_layers, a.d_mlp, device=self.device, dtype=a.layers[0].W_O.dtype)
        return self.reference(batch, intervention, hidden_means, what="hidden_means (Tracer.hidden_means")

    @torch.no_grad()
    def means(self, token_batches: list[Tensor], positional: bool) -> Tensor:
        """Mean upstream outputs over an intervention dataset: ``[pos, n_up, d]`` (positional) or ``[1, n_up, d]``."""
        return self._mean(token_batches, positional, lambda tokens: self.outputs(tokens)[1])

    @torch.no_grad()
    def hidden_means(self, token_batches: list[Tensor], positional: bool) -> Tensor:
        """Mean MLP hidden activations over an intervention dataset: ``[pos or 1, n_layers, d_mlp]``."""
        return self._mean(token_batches, positional, self.hidden)

    def _mean(self, token_batches: list[Tensor], positional: bool, run) -> Tensor:
        """The mean of ``run(tokens)`` ``[b, pos, n, d]`` over examples (and positions unless ``positional``)."""
        total, count = None, 0
        for tokens in token_batches:
            outs = run(tokens).float()
            summed = outs.sum(0) if positional else outs.sum((0, 1)).unsqueeze(0)
            total = summed if total is None else total + summed
            count += outs.shape[0] * (1 if positional else outs.shape[1])
        if total is None:
            raise ValueError("the intervention dataset is empty")
        return (total / count).to(self.anatomy.layers[0].W_O.dtype)

    # ------------------------------------------------------------------ gradients at downstream inputs
    def gradient_pass(self, batch: PairBatch, clean_logits: Tensor, metric: Metric, delta: Tensor, scores: Tensor, *,
                      edits: list[Edit] = (), up: slice = slice(None), weight: float = 1.0,
                      unit_scores: Tensor | None = None, hidden_scores: Tensor | None = None,
                      delta_post: Tensor | None = None) -> None:
        """One forward/backward on ``batch.clean`` with ``edits`` applied; add ``weight · Σ_examples Σ_pos
        Δ_u · ∂L/∂x_v`` to ``scores[u, v]`` for upstream nodes u in ``up`` (L = Σ of the per-example metric).

        ``scores`` ``[n_up, n_down, pos]`` keeps positions apart (the sum over examples only). ``unit_scores``
        ``[n_up, d_model]``, if given, receives ``weight · Σ_examples Σ_pos Δ_u[i] · Σ_v ∂L/∂x_v[i]`` over the
        downstream inputs v that read u: the node score split over the output dimensions i of u. ``hidden_scores``
        ``[n_layers, d_mlp]``, if given, receives ``weight · Σ_examples Σ_pos Δpost_n · ∂L/∂post_n`` for the MLPs in
        ``up``, ``delta_post`` ``[batch, pos, n_layers, d_mlp]`` being the hidden neurons' reference − clean."""
        a, g = self.anatomy, self.shape
        fwd: list = []
        store: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}

        def keep(key, tensor, hook):
            store[key] = tensor.detach()

        def keep_grad(key, grad, hook):
            grads[key] = grad.detach()

        def add(nodes, beta, tensor, hook):
            return tensor + beta * delta[:, :, nodes].sum(2).to(tensor.device)

        def leaf(tensor, hook):
            return tensor.detach().requires_grad_(True)

        for hook, nodes, beta in edits:
            fwd.append((hook, partial(add, nodes, beta)))
        fwd.append((a.input_hook, leaf))
        bwd = [(a.final_hook, partial(keep_grad, "final"))]
        for layer, la in enumerate(a.layers):
            for role in ("attn_norm_in", "mlp_norm_in"):
                fwd.append((la.hooks[role], partial(keep, f"{role}{layer}")))
            for role in ("q", "k", "v", "mlp_in"):
                bwd.append((la.hooks[role], partial(keep_grad, f"{role}{layer}")))
            if hidden_scores is not None:
                bwd.append((la.hooks["mlp_post"], partial(keep_grad, f"mlp_post{layer}")))
        with torch.enable_grad(), self.bridge.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            logits = self.bridge(batch.clean)
            value = metric(logits, clean_logits, batch.lengths, batch.labels)
            if not torch.isfinite(value).all():
                raise FloatingPointError("the metric is NaN or infinite on some prompts; check the labels and dtype")
            value.sum().backward()

        start, stop, _ = up.indices(g.n_up)
        # upstream-major ([u, b * pos * d]), copied once: each downstream input then reads a contiguous block of rows
        if scores.dim() == 2:
            delta_up = delta[:, :, start:stop].permute(2, 0, 1, 3).reshape(stop - start, -1)

        def accumulate(n_before: int, cols: slice | int, grad_x: Tensor) -> None:
            hi = min(stop, n_before)
            if hi <= start:
                return
            grad_x = grad_x.to(delta.device, delta.dtype)  # [b, pos, n, d]
            if scores.dim() == 3:  # per position: Σ_b Σ_d Δ_u[b, p] · grad_v[b, p]
                part = torch.einsum("bpud,bpnd->unp", delta[:, :, start:hi], grad_x)
                scores[start:hi, cols] += weight * part.to(scores.dtype)
            else:
                grad_rows = grad_x.permute(2, 0, 1, 3).reshape(grad_x.shape[2], -1)  # [n, b * pos * d]
                part = delta_up[: hi - start] @ grad_rows.T
                scores[start:hi, cols] += weight * part.to(scores.dtype).reshape(hi - start, -1)
            if unit_scores is not None:
                part = torch.einsum("bpud,bpd->ud", delta[:, :, start:hi], grad_x.sum(2))
                unit_scores[start:hi] += weight * part.to(unit_scores.dtype)

        for layer, la in enumerate(a.layers):
            cotangent = torch.cat([torch.einsum("bphe,hde->bphd", grads[f"{r}{layer}"], w)
                                   for r, w in (("q", la.W_Q), ("k", la.W_K), ("v", la.W_V))], dim=2)
            grad_x = norm_vjp(la.attn_norm, store[f"attn_norm_in{layer}"], cotangent)
            accumulate(g.upstream_before(layer, "attn"), slice(g.down(layer, "q").start, g.down(layer, "v").stop),
                       grad_x)
            grad_x = norm_vjp(la.mlp_norm, store[f"mlp_norm_in{layer}"], grads[f"mlp_in{layer}"].unsqueeze(2))
            accumulate(g.upstream_before(layer, "mlp"), g.down(layer, "mlp"), grad_x)
        accumulate(g.n_up, slice(g.logits_down, g.logits_down + 1), grads["final"].unsqueeze(2))
        if hidden_scores is not None:
            for layer in range(a.n_layers):
                if start <= g.mlp_up(layer) < stop:
                    grad = grads[f"mlp_post{layer}"].to(delta_post.device, delta_post.dtype)
                    part = torch.einsum("bpn,bpn->n", delta_post[:, :, layer], grad)
                    hidden_scores[layer] += weight * part.to(hidden_scores.dtype)

    def rows_per_pass(self, pos: int, budget_bytes: int = 2**31, cap: int = 4096) -> int:
        """How many batch rows a masked forward may stack: its two ``[rows, pos, n_up, d_model]`` buffers of upstream
        differences stay within ``budget_bytes`` (2 GiB by default)."""
        itemsize = self.anatomy.layers[0].W_O.element_size()
        per_row = 2 * pos * self.shape.n_up * self.anatomy.d_model * itemsize
        return max(1, min(cap, budget_bytes // per_row))

    # ------------------------------------------------------------------ masked forward (evaluation, exact patching)
    @torch.no_grad()
    def run_masked(self, batch: PairBatch, missing: Tensor, reference: Tensor, *, cut_units: Tensor | None = None,
                   hidden_cut: Tensor | None = None, hidden_reference: Tensor | None = None) -> Tensor:
        """Logits ``[n_masks * batch, pos, vocab]`` when every downstream input v receives Σ_u Δ_u over the
        upstream u with ``missing[i, u, v]`` (``missing`` is ``[n_masks, n_up, n_down]`` bool or weights; mask i runs
        on rows ``i*batch … (i+1)*batch-1``). Δ_u = reference_u − u's output in this very run.

        ``missing`` ``[n_masks, n_up, n_down, pos]`` cuts edges at single positions: x_v at position p receives Δ_u
        at p where ``missing[i, u, v, p]``. ``cut_units`` ``[n_masks, n_up, d_model]`` (0/1 or weights) intervenes on
        output dimensions of nodes along their edges that ``missing`` keeps: such an edge carries ``cut_units[i, u] ⊙
        Δ_u`` (a neuron-level circuit keeps the dimensions with 0). ``hidden_cut`` ``[n_masks, n_layers, d_mlp]`` (0/1
        or weights) moves MLP hidden neurons to ``hidden_reference`` (:meth:`hidden_reference`) at ``hook_mlp_post``:
        post + cut ⊙ (ref_post − post), which changes the MLP's output, read by every later node, by Σ_n cut_n
        W_out[n] (ref_post_n − post_n); give it with ``missing`` keeping the MLPs' edges, or their Δ adds on top."""
        a, g = self.anatomy, self.shape
        n_masks, b = missing.shape[0], len(batch)
        missing = missing.to(self.device)
        tokens = batch.clean.to(self.device).repeat(n_masks, 1)
        pos = tokens.shape[1]
        if missing.dim() == 4 and missing.shape[3] != pos:
            raise ValueError(f"the position-resolved mask covers {missing.shape[3]} positions but the prompts have {pos}")
        # Δ of the nodes computed so far, upstream-major ([mask, u, b, pos, d]): the Δ of the first n nodes of a mask
        # is then one contiguous block, so gathering them for a downstream input copies nothing
        ref = reference.expand(b, pos, g.n_up, a.d_model).permute(2, 0, 1, 3)
        cur = torch.zeros(n_masks, g.n_up, b, pos, a.d_model, dtype=reference.dtype, device=self.device)
        if cut_units is not None:
            cut_units = cut_units.to(self.device, cur.dtype)[:, :, None, None, :]  # [mask, u, 1, 1, d]
        store: dict[str, Tensor] = {}

        def gather(sel: Tensor, d: Tensor) -> Tensor:
            """``[mask, n, b, pos, d]``: Σ_u sel[m, u, n(, p)] · d[m, u, b, p, :]."""
            if sel.dim() == 4:
                return torch.einsum("mukp,mubpd->mkbpd", sel.to(d.dtype), d)
            out = torch.bmm(sel.transpose(1, 2).to(d.dtype), d.flatten(2))  # [mask, n, b * pos * d]
            return out.unflatten(2, (b, pos, a.d_model))

        def shift(n_before: int, cols: slice) -> Tensor | None:
            sel = missing[:, :n_before, cols]
            if cut_units is None and not sel.any():
                return None
            out = gather(sel, cur[:, :n_before])
            if cut_units is not None:
                out = out + gather(1 - sel.to(cur.dtype), cur[:, :n_before] * cut_units[:, :n_before])
            return out.permute(0, 2, 3, 1, 4).flatten(0, 1)  # [mask * b, pos, n, d]

        def set_delta(nodes, value_fn, tensor, hook):
            value = value_fn(tensor).unflatten(0, (n_masks, b)).permute(0, 3, 1, 2, 4)  # [mask, k, b, pos, d]
            cur[:, nodes] = ref[nodes] - value.to(cur.device)

        def keep(key, tensor, hook):
            store[key] = tensor

        def gate_hidden(layer, tensor, hook):
            post = tensor.unflatten(0, (n_masks, b))  # [mask, b, pos, d_mlp]
            ref_post = hidden_reference[:, :, layer].to(tensor.device, tensor.dtype)  # [b or 1, pos or 1, d_mlp]
            cut = hidden_cut[:, layer].to(tensor.device, tensor.dtype)[:, None, None, :]
            return (post + cut * (ref_post - post)).flatten(0, 1)

        def edit_qkv(layer, role, weight, tensor, hook):
            s = shift(g.upstream_before(layer, "attn"), g.down(layer, role))
            if s is None:
                return tensor
            la = a.layers[layer]
            shifted = normed_shift(la.attn_norm, store[f"attn{layer}"], s.to(tensor.device))
            return tensor + torch.einsum("bphd,hde->bphe", shifted, weight)

        def edit_mlp(layer, tensor, hook):
            s = shift(g.upstream_before(layer, "mlp"), g.down(layer, "mlp"))
            if s is None:
                return tensor
            return tensor + normed_shift(a.layers[layer].mlp_norm, store[f"mlp{layer}"], s.to(tensor.device)).squeeze(2)

        def edit_final(tensor, hook):
            s = shift(g.n_up, slice(g.logits_down, g.logits_down + 1))
            return tensor if s is None else tensor + s.squeeze(2).to(tensor.device)

        fwd = [(a.input_hook, partial(set_delta, slice(0, 1), lambda t: t.unsqueeze(2)))]
        for layer, la in enumerate(a.layers):
            h = la.hooks
            fwd += [(h["attn_norm_in"], partial(keep, f"attn{layer}")),
                    (h["mlp_norm_in"], partial(keep, f"mlp{layer}"))]
            fwd += [(h[r], partial(edit_qkv, layer, r, w)) for r, w in (("q", la.W_Q), ("k", la.W_K), ("v", la.W_V))]
            fwd.append((h["z"], partial(set_delta, g.head_up(layer), partial(head_outputs, la.W_O))))
            fwd.append((h["mlp_in"], partial(edit_mlp, layer)))
            if hidden_cut is not None:
                fwd.append((h["mlp_post"], partial(gate_hidden, layer)))
            fwd.append((h["mlp_out"], partial(set_delta, slice(g.mlp_up(layer), g.mlp_up(layer) + 1),
                                              lambda t: t.unsqueeze(2))))
        fwd.append((a.final_hook, edit_final))
        with self.bridge.hooks(fwd_hooks=fwd):
            return self.bridge(tokens)


def metric_values(metric: Metric, logits: Tensor, clean_logits: Tensor, batch: PairBatch) -> Tensor:
    """The per-example metric of ``logits`` ``[n * batch, pos, vocab]`` (n variants, variant-major) as ``[n, batch]``;
    the clean side (``clean_logits`` ``[batch, pos, vocab]``) is computed once per prompt."""
    return metric(logits, clean_logits, batch.lengths, batch.labels).view(-1, len(batch))



@torch.no_grad()
def check_additive(tracer: Tracer) -> None:
    """The engine's premise, checked on two random prompts: between two runs, every node input (each attention and MLP
    norm's input, the final norm's input) changes by exactly the sum of the changes of the node outputs written
    before it (the input embedding, each head's ``z_h @ W_O[h]``, each MLP's output). A model that transforms a
    block's output after the heads write it (Gemma-2/3 normalise the attention output) breaks it; such a model is
    refused with :class:`BridgeContractError` rather than scored approximately."""
    a, g = tracer.anatomy, tracer.shape
    names = {"final": a.final_hook, **tracer.layer_hooks("attn_norm_in"), **tracer.layer_hooks("mlp_norm_in")}
    generator = torch.Generator().manual_seed(0)
    runs = []
    for _ in range(2):
        tokens = torch.randint(0, int(tracer.bridge.cfg.d_vocab), (2, 6), generator=generator)
        runs.append((tracer.outputs(tokens)[1].double(), tracer.capture(tokens, names)[1]))
    (up_a, in_a), (up_b, in_b) = runs
    delta = up_a - up_b
    checks = [(f"blocks.{layer}'s {role} input", f"{role}_norm_in{layer}", g.upstream_before(layer, role))
              for layer in range(a.n_layers) for role in ("attn", "mlp")] + [("the final norm's input", "final", g.n_up)]
    tolerance = ADDITIVE_TOLERANCE.get(a.layers[0].W_O.dtype, 0.1)
    for where, key, n in checks:
        actual = (in_a[key].double() - in_b[key].double()).to(delta.device)
        error = float((actual - delta[:, :, :n].sum(2)).abs().max()) / max(float(actual.abs().max()), 1e-30)
        if error > tolerance:
            raise BridgeContractError(
                f"{where} is not the sum of the head and MLP outputs written before it (off by {error:.0%}): "
                f"{tracer.bridge.cfg.architecture} transforms a block's output after its heads write it (a norm "
                "after attention, say), so the circuit engine cannot score its heads exactly; refused")
