"""Attribution graphs of a replacement model (docs/definitions.md#feature-attribution-graphs).

The *replacement model* of one prompt is the model with

* every MLP replaced by its transcoder plus an error term e = MLP(x) − transcoder(x) per position (an error node),
* optionally, attention layers' concatenated head outputs ``z`` replaced by their SAE plus an error term,
* attention patterns and every norm's scale (``hook_scale``) frozen at their values on the prompt.

At the prompt itself it computes the model's logits exactly (the errors make up every difference), and with the
features' activations, the errors and the input embeddings held as constants every remaining path is linear: each
feature's pre-activation and each logit is an affine function of those *source* values. The graph's edge s → t is
the direct linear effect of source s on target t, ``a_s · (∂ pre_t / ∂ a_s)`` (for an error or embedding node,
``∂ pre_t / ∂ v_s · v_s`` summed over its d_model or ``z`` dimensions), so for every target

    Σ_s adjacency[t, s] + bias[t] = pre_t   exactly,

where ``bias[t]`` is the target's value with every source set to zero (the biases of norms, attention and
dictionaries): completeness holds by construction, and :attr:`AttributionGraph.completeness_error` measures it.

Edges come from batched backward passes through the bridge itself: the prompt is repeated ``batch`` times, each
copy's output is one target's pre-activation, and one backward gives every copy's gradient at the dictionaries'
outputs; dotting those with the active features' decoder rows gives all their edges at once (no loop over
features or edges; memory is bounded by ``batch``). Logit targets are the most probable next tokens (until their
probability sums to ``logit_probability`` or ``max_logits`` are taken), each as its logit minus the mean logit.

**Q and K edges (LEAP).** Frozen patterns make attention features' inputs pure OV (value-path) edges. What moves an
attention feature's *pattern* is reported beside them, linearized at the prompt: for a target feature of the
attention SAE at layer L, its Q edge from source s is ``a_s · ∂pre_t/∂a_s`` with layer L's pattern computed live from
its queries while its keys and values are held at their clean values (every other pattern and norm scale frozen), and
its K edge the same with queries and values held. They are first-order effects and are not part of the completeness
sum above; ``AttributionGraph.q_adjacency``/``k_adjacency`` hold one row per attention-feature target
(``qk_targets``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.features.dictionary import SparseDictionary, hook_names
from circuitflow.models.contract import input_device

NODE_KINDS = ("feature", "error", "embedding", "logit")
INPUT_HOOK = "blocks.0.hook_in"


class AttributionError(ValueError):
    """A set of dictionaries or a prompt that cannot give an attribution graph (one line, naming the fix)."""


@dataclass
class AttributionGraph:
    """Nodes (features, errors, embeddings, logits, in that order) and direct linear effects between them.

    ``adjacency[target, source]``: the effect of source on target; ``bias[target]``: the target's value with every
    source at zero; ``target_value``: a feature's pre-activation or a logit minus the mean logit (0 for sources).
    """

    nodes: pd.DataFrame
    adjacency: Tensor  # [n_nodes, n_nodes]
    bias: Tensor  # [n_nodes]
    target_value: Tensor  # [n_nodes]
    logit_probabilities: Tensor  # [n_logits]
    prompt: str
    tokens: list[str]
    model: str = ""
    qk_targets: Tensor | None = None  # [n_qk]: node indices of the attention-feature targets (None: not computed)
    q_adjacency: Tensor | None = None  # [n_qk, n_nodes]: Q edges into qk_targets
    k_adjacency: Tensor | None = None  # [n_qk, n_nodes]: K edges into qk_targets

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def index(self, kind: str) -> Tensor:
        """Row indices of the nodes of one kind (``feature``, ``error``, ``embedding`` or ``logit``)."""
        return torch.as_tensor(np.flatnonzero(self.nodes["kind"].to_numpy() == kind))

    @property
    def completeness_error(self) -> float:
        """Largest |Σ_s adjacency[t, s] + bias[t] − value[t]| over target nodes, relative to the largest |value|."""
        targets = torch.cat([self.index("feature"), self.index("logit")])
        gap = self.adjacency[targets].sum(1) + self.bias[targets] - self.target_value[targets]
        return float(gap.abs().max() / self.target_value[targets].abs().max().clamp_min(1e-12))

    def save(self, path) -> None:
        """Write the graph with ``torch.save`` (tensors and the node table)."""
        torch.save(dict(vars(self), nodes=self.nodes.to_dict("list")), path)

    @classmethod
    def load(cls, path) -> AttributionGraph:
        record = torch.load(path, weights_only=False)
        return cls(**dict(record, nodes=pd.DataFrame(record["nodes"])))


def _ordered(dictionaries: Mapping[str, SparseDictionary], n_layers: int) -> list[SparseDictionary]:
    """The dictionaries in forward order (attention before MLP within a layer); a transcoder per MLP is required."""
    by_site = {(d.info.site, d.info.layer): d for d in dictionaries.values()}
    missing = [layer for layer in range(n_layers) if ("mlp", layer) not in by_site]
    if missing:
        raise AttributionError(f"attribution graphs need a transcoder for every MLP: none for layer(s) {missing}")
    extra = sorted(layer for (_, layer) in by_site if layer >= n_layers)
    if extra:
        raise AttributionError(f"dictionaries for layer(s) {extra}, but the model has {n_layers} layers")
    return [by_site[key] for key in sorted(by_site, key=lambda key: (key[1], key[0] == "mlp"))]


class ReplacementModel:
    """The replacement model of one prompt (see the module docstring): clean captures and the hooks that freeze
    patterns and norm scales and put each dictionary's output (features + error, as constants) in place."""

    def __init__(self, bridge, dictionaries: Mapping[str, SparseDictionary], tokens: Tensor):
        if tokens.ndim != 1 or len(tokens) == 0:
            raise AttributionError("attribution graphs take one prompt's token ids [pos], got shape "
                                   f"{list(tokens.shape)}")
        self.bridge = bridge
        self.device = input_device(bridge)
        self.tokens = tokens.to(self.device)
        self.dictionaries = _ordered(dictionaries, len(bridge.blocks))
        frozen = [name for name in bridge.hook_dict if name.endswith(("hook_scale", "attn.hook_pattern"))]
        reads = {name for d in self.dictionaries for name in hook_names(d.info)} | {INPUT_HOOK}
        store: dict[str, Tensor] = {}

        def keep(name, tensor, hook):
            store[name] = tensor.detach().clone()

        with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, partial(keep, n)) for n in [*frozen, *reads]]):
            self.logits = bridge(self.tokens[None])[0].detach()  # [pos, vocab]
        self.frozen = {name: store[name] for name in frozen}
        self._check_patterns_editable()
        self.embedding = store[INPUT_HOOK][0]  # [pos, d_model]
        self.inputs, self.activations, self.errors = [], [], []
        for d in self.dictionaries:
            source, target = (store[name][0].flatten(1) for name in hook_names(d.info))
            with torch.no_grad():
                acts = d.encode(source.to(d.W_enc.dtype))
                self.errors.append((target - d.decode(acts, source.to(d.W_enc.dtype)).to(target.dtype)).detach())
            self.inputs.append(source)
            self.activations.append(acts.detach())  # [pos, n_features]

    @torch.no_grad()
    def _check_patterns_editable(self) -> None:
        """Freezing attention needs a bridge whose ``hook_pattern`` edits reach the output (GPT-J's does not)."""
        uniform = [(name, lambda tensor, hook: torch.full_like(tensor, 1.0 / tensor.shape[-1]))
                   for name in self.frozen if name.endswith("hook_pattern")]
        with self.bridge.hooks(fwd_hooks=uniform):
            changed = not torch.allclose(self.bridge(self.tokens[None])[0], self.logits)
        if not changed and len(self.tokens) > 1:
            raise AttributionError(f"{type(self.bridge.original_model).__name__}: this bridge ignores edits of "
                                   "attention patterns, so they cannot be frozen; attribution graphs support the "
                                   "GPT-NeoX, Llama and GPT-2 families")

    def freezing_hooks(self, batch: int, live_layer: int | None = None) -> list[tuple[str, Callable]]:
        """Hooks that hold every attention pattern and norm scale of ``batch`` copies of the prompt at their values
        on the prompt (usable on their own: the real model with frozen attention and norms); the attention pattern
        of ``live_layer`` (if given) is left to the model."""

        def frozen(name, tensor, hook):
            return self.frozen[name].expand(batch, *self.frozen[name].shape[1:]).to(tensor.dtype)

        live = f"blocks.{live_layer}.attn.hook_pattern"
        return [(name, partial(frozen, name)) for name in self.frozen if name != live]

    def run(self, emb_delta: Tensor, deltas: list[Tensor], scale: float = 1.0, live_layer: int | None = None,
            hooks: Sequence[tuple[str, Callable]] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """A forward of the replacement model on ``batch`` copies of the prompt: ``emb_delta`` ``[batch, pos,
        d_model]`` is added to the input embedding and ``deltas[i]`` ``[batch, pos, d_out]`` to dictionary i's
        features-plus-error output; ``scale`` multiplies every source (0: all sources off); ``live_layer``'s
        attention pattern is computed by the model, not frozen, and ``hooks`` run before the replacement's own.
        Returns the logits ``[batch, pos, vocab]`` and each dictionary's input ``[batch, pos, d_in]`` by name."""
        batch = emb_delta.shape[0]
        inputs: dict[str, Tensor] = {}

        def embed(tensor, hook):
            return tensor * scale + emb_delta.to(tensor.dtype)

        def read(d, tensor, hook):
            inputs[d.info.name] = tensor.flatten(2)
            return tensor

        def replace(i, d, tensor, hook):
            consts = self.activations[i] @ d.W_dec.detach() + self.errors[i].to(d.W_dec.dtype)
            out = consts * scale + deltas[i].to(d.W_dec.dtype) + d.b_dec.detach()
            if d.W_skip is not None:
                out = out + inputs[d.info.name].to(d.W_dec.dtype) @ d.W_skip.detach()
            return out.to(tensor.dtype).reshape(tensor.shape)

        hooks = [*hooks, *self.freezing_hooks(batch, live_layer), (INPUT_HOOK, embed)]
        for i, d in enumerate(self.dictionaries):
            source, target = hook_names(d.info)
            hooks += [(source, partial(read, d)), (target, partial(replace, i, d))]
        with self.bridge.hooks(fwd_hooks=hooks):
            logits = self.bridge(self.tokens[None].expand(batch, -1))
        return logits, inputs


def _logit_targets(logits: Tensor, probability: float, max_logits: int) -> tuple[Tensor, Tensor]:
    """The most probable next tokens until their probability sums to ``probability`` (at most ``max_logits``)."""
    probs = logits.double().softmax(-1)
    top = probs.topk(min(max_logits, probs.numel()))
    count = int((top.values.cumsum(0) < probability).sum()) + 1
    return top.indices[:count], top.values[:count]


def _target_values(run_logits: Tensor, inputs: dict[str, Tensor], targets: pd.DataFrame,
                   dictionaries: list[SparseDictionary]) -> Tensor:
    """Each batch row's own target: a feature's pre-activation or a token's logit minus the mean logit; ``[batch]``."""
    def column(name: str) -> Tensor:
        return torch.tensor(targets[name].to_numpy(), device=run_logits.device)

    rows = torch.arange(len(targets), device=run_logits.device)
    out = torch.zeros(len(targets), dtype=torch.float64, device=run_logits.device)
    last = run_logits[:, -1].double()
    is_logit = torch.tensor(targets["kind"].to_numpy() == "logit", device=out.device)
    token = column("token_id").clamp_min(0)
    out = torch.where(is_logit, last[rows, token] - last.mean(-1), out)
    names = targets["dictionary"].to_numpy()
    for d in dictionaries:
        mine = torch.tensor(names == d.info.name, device=out.device)
        if mine.any():
            pos, feat = column("position"), column("feature").clamp_min(0)
            x = inputs[d.info.name][rows, pos].to(d.W_enc.dtype)  # [batch, d_in]
            pre = (x * d.W_enc.detach()[:, feat].T).sum(-1) + d.b_enc.detach()[feat]
            out = torch.where(mine, pre.double(), out)
    return out


def _node_table(model: ReplacementModel, logit_ids: Tensor, logit_probs: Tensor, token_text: list[str],
                decode) -> pd.DataFrame:
    """One row per node: active features, error nodes, embeddings, logits (see :class:`AttributionGraph`)."""
    n_pos = len(model.tokens)
    frames = []
    for d, acts in zip(model.dictionaries, model.activations):
        pos, feat = torch.nonzero(acts > 0, as_tuple=True)
        frames.append(pd.DataFrame(dict(kind="feature", dictionary=d.info.name, site=d.info.site, layer=d.info.layer,
                                        position=pos.cpu().numpy(), feature=feat.cpu().numpy(),
                                        activation=acts[pos, feat].double().cpu().numpy())))
    for d, err in zip(model.dictionaries, model.errors):
        frames.append(pd.DataFrame(dict(kind="error", dictionary=d.info.name, site=d.info.site, layer=d.info.layer,
                                        position=np.arange(n_pos), feature=-1,
                                        activation=err.double().norm(dim=-1).cpu().numpy())))
    frames.append(pd.DataFrame(dict(kind="embedding", dictionary="", site="", layer=-1, position=np.arange(n_pos),
                                    feature=-1, activation=model.embedding.double().norm(dim=-1).cpu().numpy(),
                                    token_id=model.tokens.cpu().numpy())))
    frames.append(pd.DataFrame(dict(kind="logit", dictionary="", site="", layer=len(model.bridge.blocks),
                                    position=n_pos - 1, feature=-1, activation=logit_probs.cpu().numpy(),
                                    token_id=logit_ids.cpu().numpy())))
    nodes = pd.concat(frames, ignore_index=True)
    nodes["token_id"] = nodes["token_id"].fillna(-1).astype(int)
    nodes["token"] = [decode(int(t)) if kind == "logit" else token_text[p]
                      for kind, t, p in zip(nodes["kind"], nodes["token_id"], nodes["position"])]
    nodes["label"] = _labels(nodes)
    return nodes


def _labels(nodes: pd.DataFrame) -> list[str]:
    """Readable node names: ``mlp1[37]@3``, ``err:attn0@2``, ``emb:'+'@1``, ``logit:'12'``."""
    out = []
    for row in nodes.itertuples():
        if row.kind == "feature":
            out.append(f"{row.dictionary}[{row.feature}]@{row.position}")
        elif row.kind == "error":
            out.append(f"err:{row.dictionary}@{row.position}")
        elif row.kind == "embedding":
            out.append(f"emb:{row.token!r}@{row.position}")
        else:
            out.append(f"logit:{row.token!r}")
    return out


def _source_columns(nodes: pd.DataFrame, dictionaries: list[SparseDictionary]) -> dict[str, Tensor]:
    """Node indices of each kind of source: ``embedding``, and per dictionary name ``error:<name>`` and
    ``feature:<name>`` (in the order of that dictionary's active features)."""
    kind, names = nodes["kind"].to_numpy(), nodes["dictionary"].to_numpy()
    columns = {"embedding": torch.as_tensor(np.flatnonzero(kind == "embedding"))}
    for d in dictionaries:
        for what in ("error", "feature"):
            columns[f"{what}:{d.info.name}"] = torch.as_tensor(np.flatnonzero((kind == what) & (names == d.info.name)))
    return columns


def _edges(model: ReplacementModel, columns: dict[str, Tensor], grads: Sequence[Tensor | None], n_nodes: int,
           emb_delta: Tensor) -> Tensor:
    """One block of the adjacency, ``[batch, n_nodes]`` (float64, CPU): each source's value times the batch rows'
    gradients at it (``grads``: at the embedding, then at each dictionary's output)."""
    block = torch.zeros(emb_delta.shape[0], n_nodes, dtype=torch.float64)
    g_emb = grads[0] if grads[0] is not None else torch.zeros_like(emb_delta)
    block[:, columns["embedding"]] = (g_emb * model.embedding).sum(-1).double().cpu()
    for d, acts, err, g in zip(model.dictionaries, model.activations, model.errors, grads[1:]):
        g = torch.zeros_like(err).expand(emb_delta.shape[0], *err.shape) if g is None else g
        block[:, columns[f"error:{d.info.name}"]] = (g * err).sum(-1).double().cpu()
        pos, feat = torch.nonzero(acts > 0, as_tuple=True)
        effect = torch.einsum("bkd,kd->bk", g[:, pos], d.W_dec.detach()[feat]) * acts[pos, feat]
        block[:, columns[f"feature:{d.info.name}"]] = effect.double().cpu()
    return block


def _leaves(model: ReplacementModel, batch: int) -> tuple[Tensor, list[Tensor]]:
    """Zero source perturbations that require grad: the embedding's ``[batch, pos, d_model]`` and each
    dictionary's output's ``[batch, pos, d_out]``."""
    emb_delta = torch.zeros(batch, *model.embedding.shape, dtype=model.embedding.dtype, device=model.device,
                            requires_grad=True)
    deltas = [torch.zeros(batch, *err.shape, dtype=d.W_dec.dtype, device=model.device, requires_grad=True)
              for d, err in zip(model.dictionaries, model.errors)]
    return emb_delta, deltas


def _detach(tensor: Tensor, hook) -> Tensor:
    return tensor.detach()


def pattern_path_hooks(layer: int, path: Literal["q", "k"]) -> list[tuple[str, Callable]]:
    """Hooks that leave gradients one way into attention layer ``layer``'s output when its pattern is live: through
    its queries (``q``) or its keys (``k``); the values and the other side are detached."""
    held = {"q": "k", "k": "q"}[path]
    return [(f"blocks.{layer}.attn.hook_v", _detach), (f"blocks.{layer}.attn.hook_{held}", _detach)]


def _qk_edges(model: ReplacementModel, nodes: pd.DataFrame, columns: dict[str, Tensor],
              batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """LEAP's Q and K edges into every attention-SAE feature (see the module docstring): the target node indices
    ``[n_qk]`` and the Q and K adjacency rows ``[n_qk, n_nodes]``."""
    targets = nodes[(nodes["kind"] == "feature") & (nodes["site"] == "attn")]
    out = {path: torch.zeros(len(targets), len(nodes), dtype=torch.float64) for path in ("q", "k")}
    layers = targets["layer"].to_numpy()
    for layer in np.unique(layers):  # one layer's pattern is live per pass
        rows = np.flatnonzero(layers == layer)
        for start in range(0, len(rows), batch):
            chunk = torch.as_tensor(rows[start:start + batch])
            for path in ("q", "k"):
                emb_delta, deltas = _leaves(model, len(chunk))
                logits, inputs = model.run(emb_delta, deltas, live_layer=int(layer),
                                           hooks=pattern_path_hooks(int(layer), path))
                values = _target_values(logits, inputs, targets.iloc[chunk.numpy()], model.dictionaries)
                grads = torch.autograd.grad(values.sum(), [emb_delta, *deltas], allow_unused=True)
                out[path][chunk] = _edges(model, columns, grads, len(nodes), emb_delta)
    return torch.tensor(targets.index.to_numpy()), out["q"], out["k"]


def attribution_graph(bridge, tokenizer, prompt: str, dictionaries: Mapping[str, SparseDictionary], *,
                      batch: int = 64, logit_probability: float = 0.95, max_logits: int = 10,
                      qk_edges: bool = True, model_name: str = "") -> AttributionGraph:
    """The attribution graph of ``prompt`` in the replacement model built from ``dictionaries`` (a transcoder per MLP,
    attention SAEs optional); ``batch`` targets share one backward pass. With ``qk_edges`` and attention SAEs, the
    graph also holds LEAP's Q and K edges into attention features (two more backward passes per batch of them)."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    if len(ids) == 0:
        raise AttributionError(f"prompt {prompt!r} has no tokens")
    model = ReplacementModel(bridge, dictionaries, ids)
    logit_ids, logit_probs = _logit_targets(model.logits[-1], logit_probability, max_logits)
    token_text = [tokenizer.decode([int(t)]) for t in ids]
    nodes = _node_table(model, logit_ids, logit_probs, token_text, lambda t: tokenizer.decode([t]))
    n = len(nodes)
    targets = nodes[nodes["kind"].isin(["feature", "logit"])]
    columns = _source_columns(nodes, model.dictionaries)
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    bias = torch.zeros(n, dtype=torch.float64)
    value = torch.zeros(n, dtype=torch.float64)
    for start in range(0, len(targets), batch):
        chunk = targets.iloc[start:start + batch]
        emb_delta, deltas = _leaves(model, len(chunk))
        logits, inputs = model.run(emb_delta, deltas)
        values = _target_values(logits, inputs, chunk, model.dictionaries)
        grads = torch.autograd.grad(values.sum(), [emb_delta, *deltas], allow_unused=True)
        rows = torch.tensor(chunk.index.to_numpy())
        adjacency[rows] = _edges(model, columns, grads, n, emb_delta)
        value[rows] = values.detach().cpu()  # the sources as they are: each target's value
        with torch.no_grad():  # every source off: the bias
            off = model.run(torch.zeros_like(emb_delta), [torch.zeros_like(delta) for delta in deltas], scale=0.0)
            bias[rows] = _target_values(*off, chunk, model.dictionaries).cpu()
    qk = _qk_edges(model, nodes, columns, batch) if qk_edges else (None, None, None)
    return AttributionGraph(nodes=nodes, adjacency=adjacency, bias=bias, target_value=value,
                            logit_probabilities=logit_probs.cpu(), prompt=prompt, tokens=token_text,
                            model=model_name, qk_targets=qk[0], q_adjacency=qk[1], k_adjacency=qk[2])
