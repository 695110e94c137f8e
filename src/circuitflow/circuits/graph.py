"""The computational graph of a transformer and its circuits (``docs/definitions.md#the-graph``).

Upstream nodes (writers into the residual stream), in forward order::

    input, a0.h0 … a0.h{H-1}, m0, a1.h0, …, m{L-1}

Downstream inputs (readers of the residual stream), per layer l::

    a{l}.h{h}<q> for each query head, a{l}.g{g}<k>, a{l}.g{g}<v> for each key/value head, m{l}<in>; then logits

Keys and values are read once per key/value head, so with grouped-query attention an edge into ``<k>``/``<v>`` is an
edge into the whole group (its input is shared; the gradient there is the sum over the group's query heads). An
edge u → v exists when u is computed before v reads the residual stream: heads of layer l feed the MLP of layer l
only in sequential blocks (not in parallel GPT-NeoX/GPT-J blocks).

A :class:`Graph` holds a dense ``scores[n_up, n_down]`` tensor, the ``valid`` edge mask and the ``in_graph`` circuit
mask; selection (top-n, threshold, greedy) and pruning rewrite ``in_graph``. A circuit has one of four levels
(``docs/definitions.md#circuit-levels``): edge (any set of edges), node (``node_in_graph``, a set of upstream nodes;
``in_graph`` is then exactly the valid outgoing edges of those nodes, which is what evaluation cuts around), neuron
(``neuron_in_graph`` ``[n_up, d_model]``, output dimensions of upstream nodes; ``in_graph`` is the valid outgoing
edges of the nodes with a kept dimension, and evaluation also intervenes on the other dimensions,
:meth:`Graph.cut_units`) or mlp-neuron (the input and heads as whole nodes, each MLP split into its hidden neurons,
``hidden_in_graph`` ``[n_layers, d_mlp]``; evaluation sets the other hidden neurons to their reference,
:meth:`Graph.hidden_cut`). Graphs save to ``.pt`` and load back, export a readable ``.json``, and convert to and from
EAP-IG / MIB's JSON format (:mod:`.interop`).
"""

from __future__ import annotations

import heapq
import io
import json
import math
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from circuitflow.io import atomic_path
from circuitflow.names import component_name

Selection = Literal["topn", "threshold", "greedy"]
Level = Literal["edge", "node", "neuron", "mlp-neuron"]
LEVELS = ("edge", "node", "neuron", "mlp-neuron")


def check_level(level: str) -> None:
    """Refuse a circuit level other than ``edge``, ``node``, ``neuron`` or ``mlp-neuron`` with a one-line error."""
    if level not in LEVELS:
        raise ValueError(f"unknown circuit level {level!r}: use edge, node, neuron or mlp-neuron")


@dataclass
class Graph:
    """Edge scores and a circuit over the nodes of a model with the given shape."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool
    _: KW_ONLY
    scores: Tensor  # [n_up, n_down], float32, 0 on invalid edges
    in_graph: Tensor  # [n_up, n_down], bool
    meta: dict = field(default_factory=dict)
    node_scores: Tensor | None = None  # [n_up]: Δ_u · ∂L/∂z_u = the sum of u's outgoing edge scores
    node_in_graph: Tensor | None = None  # [n_up] bool: the nodes of a node-level circuit; None for edge-level ones
    neuron_scores: Tensor | None = None  # [n_up, d_model]: node_scores split over each node's output dimensions
    neuron_in_graph: Tensor | None = None  # [n_up, d_model] bool: the kept units of a neuron-level circuit, else None
    hidden_scores: Tensor | None = None  # [n_layers, d_mlp]: hidden neurons' Δpost · ∂L/∂post (sum: the MLP's score)
    hidden_in_graph: Tensor | None = None  # [n_layers, d_mlp] bool: kept hidden neurons at mlp-neuron level, else None

    # ---------------------------------------------------------------- construction and indexing
    @classmethod
    def empty(cls, n_layers: int, n_heads: int, n_kv_heads: int, parallel: bool, *, meta: dict | None = None) -> Graph:
        """A graph with zero scores and every valid edge in the circuit (the full model)."""
        graph = cls(n_layers, n_heads, n_kv_heads, parallel, scores=torch.zeros(0),
                    in_graph=torch.zeros(0, dtype=torch.bool), meta=meta or {})
        graph.scores = torch.zeros(graph.n_up, graph.n_down)
        graph.in_graph = graph.valid.clone()
        return graph

    @property
    def n_up(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def down_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_down(self) -> int:
        return self.n_layers * self.down_per_layer + 1

    def head_up(self, layer: int) -> slice:
        """Upstream indices of layer ``layer``'s heads."""
        start = 1 + layer * (self.n_heads + 1)
        return slice(start, start + self.n_heads)

    def mlp_up(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def is_mlp(self) -> Tensor:
        """``[n_up]`` bool: which upstream nodes are MLPs."""
        mask = torch.zeros(self.n_up, dtype=torch.bool)
        mask[[self.mlp_up(layer) for layer in range(self.n_layers)]] = True
        return mask

    def down(self, layer: int, role: Literal["q", "k", "v", "mlp"]) -> slice:
        """Downstream indices of layer ``layer``'s query/key/value inputs or its MLP input."""
        base = layer * self.down_per_layer
        h, g = self.n_heads, self.n_kv_heads
        return {"q": slice(base, base + h), "k": slice(base + h, base + h + g),
                "v": slice(base + h + g, base + h + 2 * g), "mlp": slice(base + h + 2 * g, base + h + 2 * g + 1)}[role]

    @property
    def logits_down(self) -> int:
        return self.n_down - 1

    def upstream_before(self, layer: int, role: Literal["attn", "mlp", "logits"]) -> int:
        """How many upstream nodes (a prefix in forward order) feed an input of ``role`` in ``layer``."""
        if role == "logits":
            return self.n_up
        start = 1 + layer * (self.n_heads + 1)
        return start + (self.n_heads if role == "mlp" and not self.parallel else 0)

    @property
    def valid(self) -> Tensor:
        """``[n_up, n_down]`` bool: which edges exist."""
        mask = torch.zeros(self.n_up, self.n_down, dtype=torch.bool)
        for layer in range(self.n_layers):
            mask[: self.upstream_before(layer, "attn"), self.down(layer, "q").start : self.down(layer, "v").stop] = True
            mask[: self.upstream_before(layer, "mlp"), self.down(layer, "mlp")] = True
        mask[:, self.logits_down] = True
        return mask

    def upstream_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [component_name(layer, h) for h in range(self.n_heads)] + [component_name(layer)]
        return names

    def downstream_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            names += [f"a{layer}.g{g}<{r}>" for r in "kv" for g in range(self.n_kv_heads)]
            names.append(f"m{layer}<in>")
        return names + ["logits"]

    # ---------------------------------------------------------------- nodes of a circuit
    def down_owner(self) -> Tensor:
        """``[n_down, n_up + 1]`` bool: which upstream node(s) each downstream input belongs to (column n_up is
        the logits)."""
        owner = torch.zeros(self.n_down, self.n_up + 1, dtype=torch.bool)
        for layer in range(self.n_layers):
            heads = self.head_up(layer)
            owner[self.down(layer, "q"), heads] = torch.eye(self.n_heads, dtype=torch.bool)
            group = torch.eye(self.n_kv_heads, dtype=torch.bool).repeat_interleave(self.n_heads // self.n_kv_heads, 1)
            owner[self.down(layer, "k"), heads] = group
            owner[self.down(layer, "v"), heads] = group
            owner[self.down(layer, "mlp"), self.mlp_up(layer)] = True
        owner[self.logits_down, self.n_up] = True
        return owner

    @property
    def level(self) -> Level:
        """``neuron`` when the circuit is a set of output units (:meth:`set_neurons`), ``mlp-neuron`` when it is a set
        of non-MLP nodes and MLP hidden neurons (:meth:`set_mlp_neurons`), ``node`` when it is a set of nodes
        (:meth:`set_nodes`), else ``edge``."""
        if self.neuron_in_graph is not None:
            return "neuron"
        if self.hidden_in_graph is not None:
            return "mlp-neuron"
        return "edge" if self.node_in_graph is None else "node"

    def set_nodes(self, nodes: Tensor) -> Graph:
        """Make the circuit node-level (in place): the upstream nodes with ``nodes[u]`` (``[n_up]`` bool) keep all
        their valid outgoing edges, every other node has all of its outgoing edges intervened."""
        if nodes.shape != (self.n_up,):
            raise ValueError(f"node mask has shape {tuple(nodes.shape)}; a node-level circuit needs [{self.n_up}]")
        self.node_in_graph, self.neuron_in_graph, self.hidden_in_graph = nodes.bool().clone(), None, None
        self.in_graph = self.valid & self.node_in_graph[:, None]
        return self

    def set_mlp_neurons(self, nodes: Tensor, hidden: Tensor) -> Graph:
        """Make the circuit MLP-neuron-level (in place): ``nodes`` ``[n_up]`` bool are the kept input and heads (its
        MLP entries are ignored), ``hidden`` ``[n_layers, d_mlp]`` bool the kept hidden neurons of each MLP. Kept
        nodes, and MLPs with a kept neuron, keep their valid outgoing edges (``node_in_graph``); evaluation sets the
        other hidden neurons to their reference (:meth:`hidden_cut`), so an MLP delivers the change of exactly those."""
        width = None if self.hidden_scores is None else int(self.hidden_scores.shape[1])
        if nodes.shape != (self.n_up,) or hidden.dim() != 2 or hidden.shape[0] != self.n_layers or (
                width is not None and hidden.shape[1] != width):
            raise ValueError(f"mlp-neuron masks have shapes {tuple(nodes.shape)} and {tuple(hidden.shape)}; they need "
                             f"[{self.n_up}] (upstream nodes) and [{self.n_layers}, {width or 'd_mlp'}] (hidden "
                             "neurons per MLP)")
        self.set_nodes(torch.where(self.is_mlp(), False, nodes.bool()))
        self.hidden_in_graph = hidden.bool().clone()
        self.node_in_graph[self.is_mlp()] = self.hidden_in_graph.any(1)
        self.in_graph = self.valid & self.node_in_graph[:, None]
        return self

    def hidden_cut(self) -> Tensor | None:
        """``[n_layers, d_mlp]`` bool, the MLP hidden neurons evaluation sets to their reference
        (``~hidden_in_graph``, for ``evaluate_masks(hidden_cut=...)``); None below mlp-neuron level."""
        return None if self.hidden_in_graph is None else ~self.hidden_in_graph

    def set_neurons(self, neurons: Tensor) -> Graph:
        """Make the circuit neuron-level (in place): ``neurons`` ``[n_up, d_model]`` bool are the kept output
        dimensions. A node with a kept dimension keeps all its valid outgoing edges, which carry its kept dimensions
        clean and its other dimensions intervened; a node with none has all of its outgoing edges intervened."""
        d_model = self.d_model
        if neurons.dim() != 2 or neurons.shape[0] != self.n_up or (d_model is not None and neurons.shape[1] != d_model):
            width = "d_model" if d_model is None else d_model
            raise ValueError(f"neuron mask has shape {tuple(neurons.shape)}; a neuron-level circuit needs "
                             f"[{self.n_up}, {width}] (upstream nodes x output dimensions)")
        self.neuron_in_graph, self.node_in_graph, self.hidden_in_graph = neurons.bool().clone(), None, None
        self.in_graph = self.valid & self.neuron_in_graph.any(1)[:, None]
        return self

    @property
    def d_model(self) -> int | None:
        """The width of a node's output: from ``neuron_in_graph`` or ``neuron_scores``, else ``meta["d_model"]``
        (None if the graph has none of them)."""
        for units in (self.neuron_in_graph, self.neuron_scores):
            if units is not None:
                return int(units.shape[1])
        return None if self.meta.get("d_model") is None else int(self.meta["d_model"])

    def _circuit_nodes(self) -> Tensor | None:
        """``[n_up]`` bool: the nodes of a node- or neuron-level circuit (a neuron-level node keeps a dimension);
        None at edge level."""
        if self.neuron_in_graph is not None:
            return self.neuron_in_graph.any(1)
        return self.node_in_graph

    def circuit_edges(self) -> Tensor:
        """``in_graph``, the edge mask evaluation cuts around; refuses a node- or neuron-level graph whose ``in_graph``
        was edited away from its nodes' outgoing edges."""
        nodes = self._circuit_nodes()
        if nodes is not None and not torch.equal(self.in_graph, self.valid & nodes[:, None]):
            setter, fields = {"neuron": ("set_neurons", "neuron_in_graph"), "node": ("set_nodes", "node_in_graph"),
                              "mlp-neuron": ("set_mlp_neurons", "node_in_graph and hidden_in_graph")}[self.level]
            raise ValueError(f"in_graph no longer matches {fields} (edited after {self.level}-level selection): "
                             f"call graph.{setter}(...) again, or set graph.{fields.replace(' and ', ' = graph.')} = "
                             "None for an edge-level circuit")
        return self.in_graph

    def cut_units(self) -> Tensor | None:
        """``[n_up, d_model]`` bool, the output dimensions evaluation intervenes on along kept edges
        (``~neuron_in_graph``, for ``evaluate_masks(cut_units=...)``); None below neuron level."""
        return None if self.neuron_in_graph is None else ~self.neuron_in_graph

    def nodes_in_graph(self) -> Tensor:
        """``[n_up + 1]`` bool: nodes touched by a circuit edge (as writer or reader); the last entry is logits. At
        node level: the circuit's nodes and the logits; at neuron level: the nodes with a kept dimension and the
        logits."""
        nodes = self._circuit_nodes()
        if nodes is not None:
            return torch.cat([nodes, torch.ones(1, dtype=torch.bool)])
        owner = self.down_owner()
        writes = self.in_graph.any(1)
        reads = (self.in_graph.any(0)[:, None] & owner).any(0)
        return torch.cat([writes, torch.zeros(1, dtype=torch.bool)]) | reads

    def prune(self) -> Graph:
        """Keep only circuit edges on a path from the input to the logits (in place; returns self)."""
        if self.level != "edge":
            raise ValueError(f"prune works on edge-level circuits; a {self.level}-level circuit keeps every outgoing "
                             "edge of its nodes (select at level='edge' to prune)")
        owner = self.down_owner().float()
        edges = self.in_graph.float()
        forward = torch.zeros(self.n_up + 1)
        forward[0] = 1
        backward = torch.zeros(self.n_up + 1)
        backward[-1] = 1
        for _ in range(2 * self.n_layers + 2):  # longest path: input, one node per layer and role, logits
            forward = torch.maximum(forward, ((forward[: self.n_up] @ edges) @ owner).clamp(max=1))
            backward = torch.maximum(backward, torch.cat([(edges @ (owner @ backward)).clamp(max=1), backward[-1:]]))
        alive_down = (owner @ backward).bool()
        self.in_graph &= forward[: self.n_up].bool()[:, None] & alive_down[None, :]
        return self

    # ---------------------------------------------------------------- selection
    def _ranked(self, absolute: bool, level: Level = "edge") -> Tensor:
        """Edge scores ``[n_up, n_down]`` (invalid edges -inf), node scores ``[n_up]``, neuron scores
        ``[n_up, d_model]`` or, at mlp-neuron level, the non-MLP nodes' scores then the flattened hidden scores
        ``[n_up - n_layers + n_layers * d_mlp]``, absolute or signed."""
        check_level(level)
        if level in ("node", "mlp-neuron") and self.node_scores is None:
            raise ValueError(f"{level}-level selection needs graph.node_scores (attribute() sets them; for a graph "
                             "without them set graph.node_scores = graph.scores.sum(1))")
        if level == "node":
            return self.node_scores.abs() if absolute else self.node_scores
        if level == "mlp-neuron":
            if self.hidden_scores is None:
                raise ValueError("mlp-neuron-level selection needs graph.hidden_scores: score the graph with "
                                 "attribute(..., hidden=True) and a gradient method")
            values = torch.cat([self.node_scores[~self.is_mlp()], self.hidden_scores.flatten().to(self.node_scores)])
            return values.abs() if absolute else values
        if level == "neuron":
            if self.neuron_scores is None:
                raise ValueError("neuron-level selection needs graph.neuron_scores, which attribute() sets for every "
                                 "method but exact: score the graph with EAP or EAP-IG")
            return self.neuron_scores.abs() if absolute else self.neuron_scores
        values = self.scores.abs() if absolute else self.scores
        return values.masked_fill(~self.valid, -math.inf)

    def _set_circuit(self, chosen: Tensor, level: Level) -> None:
        """Make ``chosen`` the circuit: upstream nodes ``[n_up]`` at node level, units ``[n_up, d_model]`` at neuron
        level, non-MLP nodes then hidden neurons (as :meth:`_ranked`) at mlp-neuron level, edges ``[n_up, n_down]``
        (valid ones only) at edge level."""
        if level == "node":
            self.set_nodes(chosen)
        elif level == "neuron":
            self.set_neurons(chosen)
        elif level == "mlp-neuron":
            nodes = torch.zeros(self.n_up, dtype=torch.bool)
            nodes[~self.is_mlp()] = chosen[: len(chosen) - self.hidden_scores.numel()]
            self.set_mlp_neurons(nodes, chosen[len(chosen) - self.hidden_scores.numel() :].view(self.n_layers, -1))
        else:
            self.in_graph, self.node_in_graph, self.neuron_in_graph = self.valid & chosen, None, None
            self.hidden_in_graph = None

    def n_units(self, level: Level) -> int:
        """How many things a circuit of ``level`` is chosen from: valid edges, upstream nodes, output units
        (``n_up * d_model``) or the input, heads and MLP hidden neurons (``n_up - n_layers + n_layers * d_mlp``)."""
        check_level(level)
        if level in ("neuron", "mlp-neuron"):
            return int(self._ranked(True, level).numel())
        return self.n_valid_edges if level == "edge" else self.n_up

    def select_topn(self, n: int, absolute: bool = True, *, level: Level = "edge") -> Graph:
        """The ``n`` edges (or, at node level, upstream nodes; at neuron level, output units) with the highest
        (absolute or signed) scores form the circuit (in place)."""
        ranked = self._ranked(absolute, level)
        chosen = torch.zeros(ranked.numel(), dtype=torch.bool)
        n = min(n, self.n_units(level))
        if n > 0:
            chosen[ranked.flatten().topk(n).indices] = True
        self._set_circuit(chosen.view(ranked.shape), level)
        self.meta["selection"] = dict(method="topn", n=n, absolute=absolute, level=level)
        return self

    def select_threshold(self, threshold: float, absolute: bool = True, *, level: Level = "edge") -> Graph:
        """Edges (or, at node level, upstream nodes; at neuron level, output units) whose (absolute or signed) score
        is at least ``threshold`` form the circuit (in place)."""
        self._set_circuit(self._ranked(absolute, level) >= threshold, level)
        self.meta["selection"] = dict(method="threshold", threshold=threshold, absolute=absolute, level=level)
        return self

    @staticmethod
    def _greedy_order(ranked: Tensor) -> tuple[Tensor, Tensor, list[int]]:
        """Each downstream input's edges best first, for :meth:`select_greedy`: sort keys ``[n_down, n_up]`` (float64,
        ascending, ties in upstream order; argmax's order: NaN first, then ``+inf``, then the values down), their
        upstream indices, and how many per input can be chosen (those not ``-inf``)."""
        keys = -ranked.T.double().nan_to_num(nan=math.inf, posinf=math.ldexp(1.0, 200), neginf=-math.inf)
        keys, ups = keys.sort(dim=1, stable=True)
        return keys, ups, (keys < math.inf).sum(1).tolist()

    def select_greedy(self, n: int, absolute: bool = True) -> Graph:
        """Grow a circuit from the logits: repeatedly add the best edge whose reader's node is already in the
        circuit, until it has ``n`` edges (in place). Ties go to the lowest flat index ``up * n_down + down``; a NaN
        score counts as the best, ``-inf`` is never chosen.

        Each downstream input's edges are sorted once; a heap holds the best remaining edge of every input whose node
        is in the circuit, so the cost is one sort plus ``O(log n_down)`` per chosen edge (and one read of each input's sorted
        edges when its node joins)."""
        keys, ups, usable = self._greedy_order(self._ranked(absolute))
        owner = self.down_owner().T  # [n_up + 1, n_down]: the downstream inputs each node reads through
        node_inputs = owner.nonzero()[:, 1].split(owner.sum(1).tolist())
        width = self.n_down
        in_circuit, position = [False] * (self.n_up + 1), [0] * width
        columns: dict[int, tuple[list[float], list[int]]] = {}  # inputs whose node is in the circuit: keys, ups
        heap: list[tuple[float, int, int]] = []

        def push(down: int) -> None:
            """Put input ``down``'s best remaining edge on the heap (key, flat index, input)."""
            column_keys, column_ups = columns[down]
            if position[down] < len(column_keys):
                up = column_ups[position[down]]
                heapq.heappush(heap, (column_keys[position[down]], up * width + down, down))

        def enter(node: int) -> None:
            """Node ``node`` joins the circuit: the edges into its inputs become candidates."""
            in_circuit[node] = True
            for down in node_inputs[node].tolist():
                if down not in columns:
                    columns[down] = keys[down, : usable[down]].tolist(), ups[down, : usable[down]].tolist()
                    push(down)

        enter(self.n_up)
        picked: list[int] = []
        while heap and len(picked) < n:  # the heap only ever holds valid edges, so at most n_valid_edges
            _, flat, down = heapq.heappop(heap)
            picked.append(flat)
            position[down] += 1
            push(down)
            if not in_circuit[flat // width]:
                enter(flat // width)
        chosen = torch.zeros_like(self.in_graph)
        chosen.view(-1)[torch.tensor(picked, dtype=torch.long)] = True
        self._set_circuit(chosen, "edge")
        self.meta["selection"] = dict(method="greedy", n=len(picked), absolute=absolute, level="edge")
        return self

    def select(self, method: Selection, size: float, absolute: bool = True, *, level: Level = "edge") -> Graph:
        """Dispatch to :meth:`select_topn`, :meth:`select_threshold` or :meth:`select_greedy` at ``level``."""
        check_level(level)
        if method == "topn":
            return self.select_topn(int(size), absolute, level=level)
        if method == "threshold":
            return self.select_threshold(float(size), absolute, level=level)
        if method == "greedy":
            if level != "edge":
                raise ValueError(f"greedy selection is edge-level (every node writes to the logits, so growing a "
                                 f"{level} circuit from them is top-n): use topn or threshold at level='{level}'")
            return self.select_greedy(int(size), absolute)
        raise ValueError(f"unknown selection {method!r}: use topn, threshold or greedy")

    # ---------------------------------------------------------------- counts
    @property
    def n_valid_edges(self) -> int:
        return int(self.valid.sum())

    @property
    def n_edges(self) -> int:
        """Edges in the circuit."""
        return int(self.in_graph.sum())

    @property
    def n_nodes(self) -> int:
        """Nodes in the circuit (writers or readers of a circuit edge, the logits included; at node and neuron level
        the circuit's nodes and the logits)."""
        return int(self.nodes_in_graph().sum())

    def count_neurons(self, d_model: int | None = None) -> int:
        """Output units the circuit keeps: at neuron level its kept dimensions, at mlp-neuron level its kept MLP
        hidden neurons; at edge and node level ``d_model`` for every writer with an outgoing circuit edge (``d_model``
        defaults to :attr:`d_model`)."""
        if self.neuron_in_graph is not None:
            return int(self.neuron_in_graph.sum())
        if self.hidden_in_graph is not None:
            return int(self.hidden_in_graph.sum())
        d_model = d_model or self.d_model
        if d_model is None:
            raise ValueError("n_neurons needs d_model: the graph has no neuron_scores and meta has no 'd_model'; set "
                             "graph.meta['d_model'] = bridge.cfg.d_model")
        return int(self.in_graph.any(1).sum()) * int(d_model)

    @property
    def n_neurons(self) -> int:
        """Output units in the circuit (:meth:`count_neurons`)."""
        return self.count_neurons()

    # ---------------------------------------------------------------- persistence
    def save(self, path: Path | str) -> None:
        """Write the graph to ``path`` (``.pt``), atomically. Serialized in memory first: torch names the archive
        after the file it writes, so saving to the temporary path would put its random name into the bytes."""
        state = dict(n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                     parallel=self.parallel, scores=self.scores, in_graph=self.in_graph, meta=self.meta,
                     node_scores=self.node_scores, node_in_graph=self.node_in_graph,
                     neuron_scores=self.neuron_scores, neuron_in_graph=self.neuron_in_graph,
                     hidden_scores=self.hidden_scores, hidden_in_graph=self.hidden_in_graph)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path | str) -> Graph:
        """Read a graph written by :meth:`save`."""
        return cls(**torch.load(path, map_location="cpu", weights_only=False))

    def to_json(self, path: Path | str) -> None:
        """Write a readable ``.json``: shape, metadata, the circuit's level (its nodes at node level; at neuron level
        each kept node's kept dimensions as ``[start, stop)`` ranges; at mlp-neuron level its nodes and each kept
        MLP's kept hidden neurons as ranges), and every valid edge with its score and membership."""
        ups, downs = self.upstream_names(), self.downstream_names()
        idx = self.valid.nonzero().tolist()
        edges = [dict(source=ups[u], target=downs[d], score=float(self.scores[u, d]),
                      in_graph=bool(self.in_graph[u, d])) for u, d in idx]
        doc = dict(n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, parallel=self.parallel,
                   meta=self.meta, level=self.level, n_edges_in_graph=self.n_edges, n_nodes_in_graph=self.n_nodes,
                   edges=edges)
        if self.node_in_graph is not None:
            doc["nodes_in_graph"] = [ups[u] for u in self.node_in_graph.nonzero().flatten().tolist()]
        if self.neuron_in_graph is not None:
            doc["n_neurons_in_graph"] = self.n_neurons
            doc["neurons_in_graph"] = {ups[u]: unit_ranges(row) for u, row in enumerate(self.neuron_in_graph)
                                       if row.any()}
        if self.hidden_in_graph is not None:
            doc["n_neurons_in_graph"] = self.n_neurons
            doc["hidden_in_graph"] = {ups[self.mlp_up(layer)]: unit_ranges(row)
                                      for layer, row in enumerate(self.hidden_in_graph) if row.any()}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))


def unit_ranges(kept: Tensor) -> list[list[int]]:
    """The kept entries of a 1-D bool mask as ``[start, stop)`` ranges, e.g. ``[[0, 3], [7, 8]]``."""
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), kept.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = padded.diff().nonzero().flatten().tolist()  # starts at +1, stops at -1, alternating
    return [edges[i : i + 2] for i in range(0, len(edges), 2)]
