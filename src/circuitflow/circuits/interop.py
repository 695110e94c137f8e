"""Graphs in the JSON format of EAP-IG (``hannamw/EAP-IG``, ``Graph.to_json``/``from_json``) and MIB's circuit files.

The format (``docs/definitions.md#eap-ig-and-mib-json``)::

    {"cfg":   {"n_layers": L, "n_heads": H, "parallel_attn_mlp": bool, "d_model": d, "n_key_value_heads": G},
     "nodes": {"input": {"in_graph": bool, "score": float}, "a0.h0": {...}, ..., "m{L-1}": {...},
               "logits": {"in_graph": true}},     # neuron level: also "neurons": [bool]*d, "neurons_scores": [float]*d
     "edges": {"input->a0.h1<q>": {"score": float, "in_graph": bool}, "a0.h1->m0": {...},
               "m0->logits": {...}, ...}}

Writers are named as in :class:`Graph`; readers are ``a{l}.h{h}<q|k|v>`` (one per *query* head), ``m{l}`` and
``logits``. ``n_key_value_heads`` is ours (EAP-IG ignores extra cfg keys); node ``score`` is written when the graph
has node scores; a top-level ``meta`` carries :attr:`Graph.meta` and the circuit's ``level``.

Levels (``docs/definitions.md#circuit-levels``): for an edge-level circuit a node's ``in_graph`` is EAP-IG's (an
outgoing and an incoming circuit edge); for a node-level circuit it is the circuit's node set and every edge out of a
circuit node is ``in_graph`` (EAP-IG's ``level="node"``). A neuron-level circuit (EAP-IG's ``level="neuron"``) also
writes each writer's ``neurons`` (its kept output dimensions, EAP-IG's ``neurons_in_graph`` row) and, when the graph
has neuron scores, ``neurons_scores``; a node's ``in_graph`` is then "keeps a dimension". Importing reads the level
passed, else ``meta.level`` (ours), else ``meta.selection.level``, else ``neuron`` when a writer's ``neurons`` keep
only some dimensions (only a neuron-level selection writes that), else ``edge``; at node level the nodes'
``in_graph`` is the circuit, at neuron level the writers' ``neurons``, and the edges' ``in_graph`` follows from it.
``neurons_scores`` on every writer load as :attr:`Graph.neuron_scores` (NaN, EAP-IG's "unscored", stays NaN).
EAP-IG has no MLP hidden-neuron unit, so an mlp-neuron-level circuit is refused both ways.

Grouped-query attention: EAP-IG ungroups key/value heads, so it has a key and a value input per query head, while
ours are per key/value head (the input the group shares). The gradient at the shared input is the sum of the
group's query heads' gradients, so importing *sums* the group's scores (exact) and keeps the edge in the circuit
when any query head of the group keeps it; exporting gives each query head of the group the key/value head's score
divided by the group size (so a re-import sums back to it) and the key/value head's ``in_graph``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from circuitflow.circuits.graph import Graph, Level, check_level
from circuitflow.io import atomic_path


def eap_readers(graph: Graph) -> tuple[list[str], Tensor]:
    """EAP-IG's reader names in its column order, and ``[n_eap_down]`` the index of our reader each one belongs to."""
    names, owner = [], []
    group_size = graph.n_heads // graph.n_kv_heads
    for layer in range(graph.n_layers):
        for role in "qkv":
            ours = graph.down(layer, role).start
            names += [f"a{layer}.h{h}<{role}>" for h in range(graph.n_heads)]
            owner += [ours + (h if role == "q" else h // group_size) for h in range(graph.n_heads)]
        names.append(f"m{layer}")
        owner.append(graph.down(layer, "mlp").start)
    return names + ["logits"], torch.tensor(owner + [graph.logits_down])


def _node_in_graph(graph: Graph, in_eap: Tensor, owner: Tensor) -> Tensor:
    """``[n_up]`` EAP-IG's node membership: an outgoing circuit edge, and an incoming one (the input always has)."""
    reader_node = graph.down_owner()[owner, : graph.n_up]  # [n_eap_down, n_up]
    incoming = (in_eap.any(0)[:, None] & reader_node).any(0)
    incoming[0] = True
    return in_eap.any(1) & incoming


def to_eap_dict(graph: Graph, *, d_model: int | None = None) -> dict:
    """The graph as an EAP-IG/MIB JSON document (see the module docstring); ``d_model`` defaults to
    :attr:`Graph.d_model` (EAP-IG's loader needs it)."""
    if graph.level == "mlp-neuron":
        raise ValueError("to_eap_json: EAP-IG's JSON has no MLP hidden-neuron units; select the circuit at level "
                         "'edge', 'node' or 'neuron' to export it (graph.save keeps the mlp-neuron level)")
    d_model = d_model if d_model is not None else graph.d_model
    if d_model is None:
        raise ValueError("to_eap_json: EAP-IG's cfg needs d_model and the graph has none (no neuron_scores, no "
                         "meta['d_model']); pass d_model= (e.g. bridge.cfg.d_model)")
    if graph.d_model is not None and graph.neuron_in_graph is not None and int(d_model) != graph.d_model:
        raise ValueError(f"to_eap_json: d_model={d_model} but the neuron-level circuit has {graph.d_model} "
                         "dimensions per node; pass the model's d_model")
    readers, owner = eap_readers(graph)
    shared_by = torch.bincount(owner, minlength=graph.n_down).double()  # EAP-IG readers per reader of ours
    scores = graph.scores.double()[:, owner] / shared_by[owner]
    in_eap = graph.circuit_edges()[:, owner] & graph.valid[:, owner]
    writers = graph.upstream_names()
    node_in = _node_in_graph(graph, in_eap, owner) if graph.level == "edge" else graph.nodes_in_graph()[:-1]
    nodes = {}
    for u, name in enumerate(writers):
        nodes[name] = {"in_graph": bool(node_in[u])}
        if graph.node_scores is not None:
            nodes[name]["score"] = float(graph.node_scores[u])
        if graph.neuron_in_graph is not None:
            nodes[name]["neurons"] = graph.neuron_in_graph[u].tolist()
            if graph.neuron_scores is not None:
                nodes[name]["neurons_scores"] = graph.neuron_scores[u].tolist()
    nodes["logits"] = {"in_graph": True}
    edges = {f"{writers[u]}->{readers[j]}": {"score": float(scores[u, j]), "in_graph": bool(in_eap[u, j])}
             for u, j in graph.valid[:, owner].nonzero().tolist()}
    cfg = dict(n_layers=graph.n_layers, n_heads=graph.n_heads, parallel_attn_mlp=graph.parallel, d_model=int(d_model),
               n_key_value_heads=graph.n_kv_heads)
    return dict(cfg=cfg, nodes=nodes, edges=edges, meta=dict(graph.meta, level=graph.level))


def _shape(doc: dict, n_kv_heads: int | None, source: str) -> tuple[int, int, int, bool]:
    """(n_layers, n_heads, n_kv_heads, parallel) from the document's cfg, with a one-line error for a bad one."""
    missing = [key for key in ("cfg", "nodes", "edges") if key not in doc]
    if missing:
        raise ValueError(f"{source}: no {missing[0]!r} key; an EAP-IG/MIB graph file has cfg, nodes and edges")
    cfg = doc["cfg"]
    absent = [key for key in ("n_layers", "n_heads", "parallel_attn_mlp") if key not in cfg]
    if absent:
        raise ValueError(f"{source}: cfg has no {absent[0]!r}; add it (n_layers, n_heads, parallel_attn_mlp)")
    n_heads = int(cfg["n_heads"])
    n_kv = int(n_kv_heads or cfg.get("n_key_value_heads") or n_heads)
    if n_heads % n_kv:
        raise ValueError(f"{source}: n_key_value_heads={n_kv} does not divide n_heads={n_heads}; pass the model's "
                         f"number of key/value heads as n_kv_heads=")
    return int(cfg["n_layers"]), n_heads, n_kv, bool(cfg["parallel_attn_mlp"])


def _node_field(doc: dict, writers: list[str], key: str, level: str, source: str) -> list:
    """Every writer's ``key`` entry, with a one-line error naming the first writer without one."""
    missing = [name for name in writers if key not in doc["nodes"].get(name, {})]
    if missing:
        raise ValueError(f"{source}: node {missing[0]!r} has no {key}; a {level}-level circuit needs every node's "
                         f"{key} (or import it with level='edge')")
    return [doc["nodes"][name][key] for name in writers]


def _unit_rows(rows: list, writers: list[str], key: str, d_model: int | None, source: str) -> Tensor:
    """``[n_up, d_model]`` float64 from the writers' per-dimension lists, refusing rows of another width."""
    width = d_model if d_model is not None else len(rows[0])
    for name, row in zip(writers, rows, strict=True):
        if len(row) != width:
            raise ValueError(f"{source}: node {name!r} has {len(row)} {key} but cfg.d_model is {width}; one entry "
                             f"per output dimension")
    return torch.tensor(rows, dtype=torch.float64)


def _default_level(doc: dict, graph: Graph, writers: list[str]) -> str:
    """The level our export wrote (``meta.level``), else ``meta.selection.level``, else ``neuron`` when a writer keeps
    only some of its ``neurons``, else ``edge``."""
    if "level" in (doc.get("meta") or {}):
        return doc["meta"]["level"]
    if "level" in graph.meta.get("selection", {}):
        return graph.meta["selection"]["level"]
    partial = [name for name in writers
               if len({bool(x) for x in doc["nodes"].get(name, {}).get("neurons", [])}) == 2]
    return "neuron" if partial else "edge"


def from_eap_dict(doc: dict, *, n_kv_heads: int | None = None, level: Level | None = None,
                  source: str = "graph JSON") -> Graph:
    """A :class:`Graph` from an EAP-IG/MIB JSON document. ``n_kv_heads`` (the model's key/value heads) defaults to
    ``cfg["n_key_value_heads"]``, else ``n_heads``; pass it to import an ungrouped EAP-IG graph of a GQA model.
    ``level`` defaults to ``meta.level`` or ``meta.selection.level`` if the document has one, else ``neuron`` when a
    writer keeps only some of its ``neurons``, else ``edge``."""
    n_layers, n_heads, n_kv, parallel = _shape(doc, n_kv_heads, source)
    meta = {key: value for key, value in (doc.get("meta") or {}).items() if key != "level"}
    graph = Graph.empty(n_layers, n_heads, n_kv, parallel, meta=meta)
    if "d_model" in doc["cfg"]:
        graph.meta.setdefault("d_model", int(doc["cfg"]["d_model"]))
    readers, owner = eap_readers(graph)
    writer_index = {name: u for u, name in enumerate(graph.upstream_names())}
    reader_index = {name: j for j, name in enumerate(readers)}
    valid = graph.valid[:, owner]
    scores = torch.zeros(valid.shape, dtype=torch.float64)
    in_eap = torch.zeros(valid.shape, dtype=torch.bool)
    seen = torch.zeros(valid.shape, dtype=torch.bool)
    for name, edge in doc["edges"].items():
        writer, _, reader = name.partition("->")
        u, j = writer_index.get(writer), reader_index.get(reader)
        if u is None or j is None or not valid[u, j]:
            kind = "parallel" if parallel else "sequential"
            raise ValueError(f"{source}: edge {name!r} does not exist in a {kind} model with {n_layers} layers and "
                             f"{n_heads} heads; check cfg (n_layers, n_heads, parallel_attn_mlp)")
        scores[u, j], in_eap[u, j], seen[u, j] = float(edge["score"]), bool(edge["in_graph"]), True
    if (valid & ~seen).any():
        u, j = (valid & ~seen).nonzero()[0].tolist()
        raise ValueError(f"{source}: {int((valid & ~seen).sum())} edges of the model are missing (first: "
                         f"'{graph.upstream_names()[u]}->{readers[j]}'); EAP-IG's to_json writes every edge")
    to_ours = torch.zeros(len(readers), graph.n_down, dtype=torch.float64)
    to_ours[torch.arange(len(readers)), owner] = 1
    graph.scores = (scores @ to_ours).float()
    graph.in_graph = (in_eap.double() @ to_ours) > 0
    writers = graph.upstream_names()
    if all("score" in doc["nodes"].get(name, {}) for name in writers):
        graph.node_scores = torch.tensor([float(doc["nodes"][name]["score"]) for name in writers])
    if all("neurons_scores" in doc["nodes"].get(name, {}) for name in writers):
        rows = [doc["nodes"][name]["neurons_scores"] for name in writers]
        graph.neuron_scores = _unit_rows(rows, writers, "neurons_scores", graph.d_model, source)
    level = level or _default_level(doc, graph, writers)
    check_level(level)
    if level == "mlp-neuron":
        raise ValueError(f"{source}: EAP-IG's JSON has no MLP hidden-neuron units; import it at level 'edge', 'node' "
                         "or 'neuron'")
    if level == "node":
        graph.set_nodes(torch.tensor([bool(x) for x in _node_field(doc, writers, "in_graph", level, source)]))
    elif level == "neuron":
        rows = _node_field(doc, writers, "neurons", level, source)
        graph.set_neurons(_unit_rows(rows, writers, "neurons", graph.d_model, source).bool())
    return graph


def to_eap_json(graph: Graph, path: Path | str, *, d_model: int | None = None) -> None:
    """Write ``graph`` as an EAP-IG/MIB JSON file (atomically); EAP-IG's ``Graph.from_json`` reads it."""
    doc = to_eap_dict(graph, d_model=d_model)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc))


def from_eap_json(path: Path | str, *, n_kv_heads: int | None = None, level: Level | None = None) -> Graph:
    """Read an EAP-IG/MIB JSON graph file (e.g. from EAP-IG's ``Graph.to_json``) as a :class:`Graph`; ``level`` as
    in :func:`from_eap_dict`."""
    return from_eap_dict(json.loads(Path(path).read_text()), n_kv_heads=n_kv_heads, level=level, source=str(path))
