"""Position-aware circuits (PEAP): edges and nodes split by token position
(``docs/definitions.md#position-aware-circuits``).

An ordinary EAP graph sums every edge over positions. For prompts of one template (``op1 operator op2 =`` behind
an optional few-shot prefix, every prompt the same token length) positions mean the same thing in every prompt, so
they can be kept apart, as position-aware edge attribution patching (PEAP) does:

* the edge (u → v, p) is u's write into the residual stream at position p as read by v at position p. Attention
  moves information between positions only *inside* a head (its query at p' reads keys and values at p ≤ p'), so
  "the input of v at p" is a well-defined place and the split is exact: cutting (u → v, p) for every p cuts u → v;
* its score S(u → v, p) = Δ_u[p] · ∂L/∂x_v[p] (EAP; the EAP-IG variants average the gradient the same way), the
  terms of the ordinary edge score before the sum over positions, so summing a :class:`PositionGraph` over
  positions gives the ordinary :class:`Graph` (:meth:`PositionGraph.to_graph`); ``exact`` runs one masked forward
  per valid (edge, position), with x_v at p alone receiving Δ_u at p;
* a circuit is a set of (edge, position) pairs, or at node level a set of (node, position) pairs, each keeping all
  of its valid outgoing edges at that position; evaluation gives every input x_v at p the Δ_u at p of the pairs
  outside the circuit (:meth:`Tracer.run_masked` with a ``[n_up, n_down, pos]`` mask), so the full circuit is the
  clean run and the empty one the fully intervened run, position by position.

Positions are named from the prompt template by :func:`position_labels` (``shot1.op1 … op1, operator, op2, =``).

Example::

    from circuitflow.circuits.positions import attribute_positions, faithfulness_curve, position_labels
    graph = attribute_positions(bridge, batches, logit_diff, "EAP-IG-inputs", positions=position_labels(prompts, tok))
    graph.select_topn(20)                     # the 20 best (edge, position) pairs
    curve = faithfulness_curve(bridge, graph, batches, logit_diff, level="node")
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitflow.arithmetic import prompt_text
from circuitflow.circuits.attribution import METHODS, Method, edge_scores
from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.evaluation import MIB_FRACTIONS, faithfulness_of_masks
from circuitflow.circuits.graph import Graph
from circuitflow.circuits.tracing import Intervention, Tracer, metric_values
from circuitflow.io import atomic_path
from circuitflow.metrics import Metric
from circuitflow.prompts import prompt_prefix

Level = Literal["edge", "node"]  # position-aware circuits have no neuron levels

# one solved few-shot example "x op y=r" and the separator up to the next example
SHOT = re.compile(r"(\d+)(\D+?)(\d+)(=)(\d+)(\D*)")
SHOT_PARTS = ("op1", "operator", "op2", "=", "answer", "sep")


def check_level(level: str) -> None:
    """Refuse a position-aware circuit level other than ``edge`` or ``node`` with a one-line error."""
    if level not in ("edge", "node"):
        raise ValueError(f"position-aware circuit level {level!r} is not available: use edge or node")


# ---------------------------------------------------------------------------------------------------- position labels
def prompt_segments(prompt: str, tail: str) -> list[tuple[str, int]]:
    """(label, end character) of each part of ``prompt``: the few-shot examples of its prefix (``shot{i}.op1`` …
    ``shot{i}.sep``) then the question ``tail`` = ``x op y=`` (``op1, operator, op2, =``)."""
    prefix, segments, end = prompt[: len(prompt) - len(tail)], [], 0
    for i, shot in enumerate(SHOT.finditer(prefix), start=1):
        for part, text in zip(SHOT_PARTS, shot.groups()):
            if text:
                end += len(text)
                segments.append((f"shot{i}.{part}", end))
    if end != len(prefix):
        segments.append(("prefix", len(prefix)))  # a prefix that is not a list of solved examples
    question = re.fullmatch(r"(\d+)(\D+?)(\d+)(=)", tail)
    for part, text in zip(SHOT_PARTS, question.groups()):
        end += len(text)
        segments.append((part, end))
    return segments


def token_labels(prompt: str, tail: str, tokenizer) -> list[str]:
    """The label of each token of ``prompt``: the first segment whose end the tokens up to it reach (tokenizing the
    prompt cut after each segment; a token that straddles two segments is named after the later one)."""
    counts = [(label, len(tokenizer(prompt[:end])["input_ids"])) for label, end in prompt_segments(prompt, tail)]
    n_tokens = len(tokenizer(prompt)["input_ids"])
    return [next((label for label, count in counts if count > j), "?") for j in range(n_tokens)]


def position_labels(prompts: pd.DataFrame, tokenizer) -> list[str]:
    """Names of the token positions of a prompt set (columns ``operator, op1, op2, prompt``) of one token length:
    ``shot1.op1 … shot1.sep`` for the few-shot examples, then ``op1, operator, op2, =``. Where prompts split into
    tokens differently, a position is named by every label it has, joined with ``|``."""
    tails = [prompt_text(row.operator, int(row.op1), int(row.op2)) for row in prompts.itertuples()]
    prompt_prefix(prompts)  # raises PromptError when the prompts do not share one few-shot prefix
    per_prompt = [token_labels(p, t, tokenizer) for p, t in zip(prompts["prompt"], tails)]
    lengths = sorted({len(labels) for labels in per_prompt})
    if len(lengths) != 1:
        raise ValueError(f"position-aware circuits need prompts of one token length, got lengths {lengths}: keep the "
                         "prompts of one length (prompt_len) first")
    return ["|".join(dict.fromkeys(column)) for column in zip(*per_prompt)]


def most_common_length(prompts: pd.DataFrame) -> pd.DataFrame:
    """The rows of a prompt set (column ``prompt_len``) with its most common token length (the shortest on a tie)."""
    counts = prompts["prompt_len"].value_counts()
    length = min(counts.index[counts == counts.max()])
    return prompts[prompts["prompt_len"] == length].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- the graph
@dataclass
class PositionGraph:
    """Edge scores per token position and a circuit of (edge, position) or (node, position) pairs."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool
    _: KW_ONLY
    scores: Tensor  # [n_up, n_down, pos] float64, averaged over examples, 0 on invalid edges
    in_graph: Tensor  # [n_up, n_down, pos] bool
    positions: list[str]  # a label per position
    meta: dict = field(default_factory=dict)
    node_in_graph: Tensor | None = None  # [n_up, pos] bool: the (node, position) pairs of a node-level circuit

    @classmethod
    def from_scores(cls, shape: Graph, scores: Tensor, positions: Sequence[str], meta: dict | None = None
                    ) -> PositionGraph:
        """A graph of ``shape`` (a :class:`Graph`) with ``scores`` ``[n_up, n_down, pos]`` and every valid (edge,
        position) pair in the circuit."""
        if len(positions) != scores.shape[2]:
            raise ValueError(f"{len(positions)} position labels for {scores.shape[2]} positions: give one per token")
        valid = shape.valid[..., None].expand(scores.shape).clone()
        return cls(shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.parallel, scores=scores * valid,
                   in_graph=valid, positions=list(positions), meta=meta or {})

    @property
    def shape(self) -> Graph:
        """An empty :class:`Graph` of the same model (names, valid edges, readers' owners)."""
        return Graph.empty(self.n_layers, self.n_heads, self.n_kv_heads, self.parallel)

    @property
    def n_pos(self) -> int:
        return self.scores.shape[2]

    @property
    def valid(self) -> Tensor:
        """``[n_up, n_down, pos]`` bool: which (edge, position) pairs exist."""
        return self.shape.valid[..., None].expand(self.scores.shape)

    @property
    def node_scores(self) -> Tensor:
        """``[n_up, pos]``: each (node, position) pair's score, the sum of its outgoing edges' scores there."""
        return self.scores.sum(1)

    @property
    def level(self) -> Level:
        return "edge" if self.node_in_graph is None else "node"

    def to_graph(self) -> Graph:
        """The ordinary graph: scores summed over positions, an edge in the circuit at any of its positions."""
        graph = Graph.empty(self.n_layers, self.n_heads, self.n_kv_heads, self.parallel, meta=dict(self.meta))
        graph.scores = self.scores.sum(2)
        graph.node_scores = graph.scores.sum(1)
        graph.in_graph = self.in_graph.any(2)
        return graph

    # ------------------------------------------------------------------------------------------------ selection
    def _ranked(self, absolute: bool, level: Level) -> Tensor:
        """(Edge, position) scores ``[n_up, n_down, pos]`` (invalid pairs -inf) or (node, position) scores."""
        check_level(level)
        values = self.node_scores if level == "node" else self.scores
        values = values.abs() if absolute else values
        return values if level == "node" else values.masked_fill(~self.valid, -math.inf)

    def set_nodes(self, nodes: Tensor) -> PositionGraph:
        """Make the circuit the (node, position) pairs of ``nodes`` ``[n_up, pos]`` (in place), each with all of its
        valid outgoing edges at that position."""
        if nodes.shape != (self.shape.n_up, self.n_pos):
            raise ValueError(f"node mask has shape {tuple(nodes.shape)}; needs [{self.shape.n_up}, {self.n_pos}]")
        self.node_in_graph = nodes.bool().clone()
        self.in_graph = self.valid & self.node_in_graph[:, None, :]
        return self

    def _set_circuit(self, chosen: Tensor, level: Level) -> None:
        if level == "node":
            self.set_nodes(chosen)
        else:
            self.in_graph, self.node_in_graph = self.valid & chosen, None

    def select_topn(self, n: int, absolute: bool = True, *, level: Level = "edge") -> PositionGraph:
        """The ``n`` best (edge, position) pairs, or (node, position) pairs at node level, form the circuit."""
        ranked = self._ranked(absolute, level)
        chosen = torch.zeros(ranked.numel(), dtype=torch.bool)
        n = min(n, self.n_valid if level == "edge" else ranked.numel())
        if n > 0:
            chosen[ranked.flatten().topk(n).indices] = True
        self._set_circuit(chosen.view(ranked.shape), level)
        self.meta["selection"] = dict(method="topn", n=n, absolute=absolute, level=level)
        return self

    def select_threshold(self, threshold: float, absolute: bool = True, *, level: Level = "edge") -> PositionGraph:
        """The pairs whose (absolute or signed) score is at least ``threshold`` form the circuit."""
        self._set_circuit(self._ranked(absolute, level) >= threshold, level)
        self.meta["selection"] = dict(method="threshold", threshold=threshold, absolute=absolute, level=level)
        return self

    def select(self, method: str, size: float, absolute: bool = True, *, level: Level = "edge") -> PositionGraph:
        """:meth:`select_topn` or :meth:`select_threshold` at ``level``."""
        if method == "topn":
            return self.select_topn(int(size), absolute, level=level)
        if method == "threshold":
            return self.select_threshold(float(size), absolute, level=level)
        raise ValueError(f"position-aware selection {method!r} is not available: use topn or threshold")

    def prune(self) -> PositionGraph:
        """Keep the circuit's pairs whose edge lies on an input-to-logits path of the circuit summed over positions
        (:meth:`Graph.prune`; in place, edge level only)."""
        if self.node_in_graph is not None:
            raise ValueError("prune works on edge-level circuits: select at level='edge' to prune")
        self.in_graph &= self.to_graph().prune().in_graph[..., None]
        return self

    # ------------------------------------------------------------------------------------------------ counts
    @property
    def n_valid(self) -> int:
        """Valid (edge, position) pairs."""
        return int(self.shape.valid.sum()) * self.n_pos

    @property
    def n_edges(self) -> int:
        """(Edge, position) pairs in the circuit."""
        return int(self.in_graph.sum())

    def nodes_in_graph(self) -> Tensor:
        """``[n_up + 1, pos]`` bool: (node, position) pairs that write or read a circuit edge (last row: logits); at
        node level the circuit's pairs and the logits at the last position."""
        if self.node_in_graph is not None:
            logits = torch.zeros(1, self.n_pos, dtype=torch.bool)
            logits[0, -1] = True
            return torch.cat([self.node_in_graph, logits])
        owner = self.shape.down_owner().float()  # [n_down, n_up + 1]
        reads = (owner.T @ self.in_graph.any(0).float()).bool()  # [n_up + 1, pos]
        writes = torch.cat([self.in_graph.any(1), torch.zeros(1, self.n_pos, dtype=torch.bool)])
        return writes | reads

    @property
    def n_nodes(self) -> int:
        """(Node, position) pairs in the circuit."""
        return int(self.nodes_in_graph().sum())

    # ------------------------------------------------------------------------------------------------ persistence
    def save(self, path: Path | str) -> None:
        """Write the graph to ``path`` (``.pt``) atomically (serialized in memory first, see :meth:`Graph.save`)."""
        buffer = io.BytesIO()
        torch.save(dict(n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                        parallel=self.parallel, scores=self.scores, in_graph=self.in_graph, positions=self.positions,
                        meta=self.meta, node_in_graph=self.node_in_graph), buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path | str) -> PositionGraph:
        """Read a graph written by :meth:`save`."""
        return cls(**torch.load(path, map_location="cpu", weights_only=False))

    def to_json(self, path: Path | str) -> None:
        """Write a readable ``.json``: shape, position labels, metadata, level, and every valid (edge, position)
        pair with its score and membership."""
        shape = self.shape
        ups, downs = shape.upstream_names(), shape.downstream_names()
        edges = [dict(source=ups[u], target=downs[d], position=p, label=self.positions[p],
                      score=float(self.scores[u, d, p]), in_graph=bool(self.in_graph[u, d, p]))
                 for u, d, p in self.valid.nonzero().tolist()]
        doc = dict(n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, parallel=self.parallel,
                   positions=self.positions, meta=self.meta, level=self.level, n_edges_in_graph=self.n_edges,
                   n_nodes_in_graph=self.n_nodes, edges=edges)
        if self.node_in_graph is not None:
            doc["nodes_in_graph"] = [dict(node=ups[u], position=p, label=self.positions[p])
                                     for u, p in self.node_in_graph.nonzero().tolist()]
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))


# ---------------------------------------------------------------------------------------------------- attribution
def exact_position_scores(tracer: Tracer, batch: PairBatch, clean_logits: Tensor, reference: Tensor,
                          metric: Metric) -> Tensor:
    """``[n_up, n_down, pos]``: Σ over the batch of L(only (u → v, p) intervened) − L(clean), one masked forward per
    valid (edge, position) pair (batched)."""
    g, pos = tracer.shape, batch.clean.shape[1]
    pairs = g.valid[..., None].expand(g.n_up, g.n_down, pos).nonzero()
    base = metric_values(metric, clean_logits, clean_logits, batch).double().sum()
    out = torch.zeros(g.n_up, g.n_down, pos, dtype=torch.float64)
    chunk = max(1, tracer.rows_per_pass(pos) // len(batch))
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        missing = torch.zeros(len(part), g.n_up, g.n_down, pos, dtype=torch.bool)
        missing[torch.arange(len(part)), part[:, 0], part[:, 1], part[:, 2]] = True
        values = metric_values(metric, tracer.run_masked(batch, missing, reference), clean_logits, batch)
        out[part[:, 0], part[:, 1], part[:, 2]] = (values.double().sum(1) - base).cpu()
    return out


def exact_scores(tracer: Tracer, batches: Sequence[PairBatch], metric: Metric, intervention: Intervention,
                 means: Tensor | None, progress: bool) -> tuple[Tensor, int]:
    """Summed exact (edge, position) scores ``[n_up, n_down, pos]`` and the number of examples."""
    total, n_examples = None, 0
    for batch in tqdm(batches, desc="exact", disable=not progress, mininterval=5):
        batch = batch.to(tracer.device)
        clean_logits, _ = tracer.capture(batch.clean, {})
        part = exact_position_scores(tracer, batch, clean_logits, tracer.reference(batch, intervention, means),
                                     metric)
        total = part if total is None else total + part
        n_examples += len(batch)
    return total, n_examples


def attribute_positions(
    bridge,
    batches: Sequence[PairBatch],
    metric: Metric,
    method: Method = "EAP-IG-inputs",
    intervention: Intervention = "patching",
    *,
    ig_steps: int = 5,
    means: Tensor | None = None,
    positions: Sequence[str] | None = None,
    tracer: Tracer | None = None,
    progress: bool = True,
) -> PositionGraph:
    """Score every valid (edge, position) pair with ``method`` on prompt pairs of one token length, averaged over
    the examples; ``positions`` labels the positions (default ``pos0, pos1, …``; see :func:`position_labels`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    tracer = tracer or Tracer(bridge)
    lengths = sorted({int(batch.clean.shape[1]) for batch in batches})
    if len(lengths) != 1:
        raise ValueError(f"position-aware circuits need prompts of one token length, got lengths {lengths}: keep the "
                         "prompts of one length (prompt_len) first")
    if method == "exact":
        scores, n_examples = exact_scores(tracer, batches, metric, intervention, means, progress)
    else:
        scores, _, n_examples = edge_scores(tracer, batches, metric, method, intervention, ig_steps=ig_steps,
                                            means=means, per_position=True, progress=progress)
    meta = dict(method=method, intervention=intervention, n_examples=n_examples,
                ig_steps=ig_steps if "IG" in method else None)
    return PositionGraph.from_scores(tracer.shape, (scores / n_examples).cpu(),
                                     positions or [f"pos{p}" for p in range(lengths[0])], meta)


# ---------------------------------------------------------------------------------------------------- evaluation
def faithfulness_curve(bridge, graph: PositionGraph, batches: Sequence[PairBatch], metric: Metric,
                       intervention: Intervention = "patching", *, fractions: Sequence[float] = MIB_FRACTIONS,
                       selection: str = "topn", absolute: bool = True, level: Level = "edge",
                       means: Tensor | None = None, tracer: Tracer | None = None) -> pd.DataFrame:
    """Faithfulness of the circuits of ``graph`` at each fraction of its valid (edge, position) pairs (``level=
    "node"``: of its (node, position) pairs), all sizes evaluated in one batched pass.

    Columns as :func:`circuitflow.circuits.faithfulness_curve`: ``fraction, n_edges, n_nodes, metric, metric_full,
    metric_empty, faithfulness, selection, absolute, level`` (edges and nodes counted as (edge/node, position)
    pairs); the graph's circuit and metadata are left as they were.
    """
    check_level(level)
    tracer = tracer or Tracer(bridge)
    kept = graph.in_graph.clone(), graph.node_in_graph, dict(graph.meta)
    total = graph.n_valid if level == "edge" else graph.shape.n_up * graph.n_pos
    masks, sizes = [], []
    for fraction in fractions:
        graph.select(selection, max(1, math.ceil(fraction * total)), absolute, level=level)
        masks.append(graph.in_graph.clone())
        sizes.append((graph.n_edges, graph.n_nodes))
    graph.in_graph, graph.node_in_graph, graph.meta = kept
    values, full, empty = faithfulness_of_masks(tracer, torch.stack(masks), batches, metric, intervention,
                                                means=means)
    return pd.DataFrame(dict(
        fraction=list(fractions), n_edges=[s[0] for s in sizes], n_nodes=[s[1] for s in sizes],
        metric=values.tolist(), metric_full=full, metric_empty=empty,
        faithfulness=((values - empty) / (full - empty)).tolist(), selection=selection, absolute=absolute,
        level=level,
    ))
