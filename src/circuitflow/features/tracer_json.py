"""A pruned attribution graph as circuit-tracer's graph JSON (docs/definitions.md#circuit-tracer-graph-json).

circuit-tracer's viewer (``circuit_tracer/frontend``) loads one JSON file per graph::

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version"},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
                "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}, ...],
     "links": [{"source": node_id, "target": node_id, "weight": adjacency[target, source]}, ...]}

Nodes, as circuit-tracer writes them where it can:

- MLP transcoder feature ``f`` of layer ``l`` at position ``p``: ``node_id`` ``"{l}_{f}_{p}"``, ``feature`` the Cantor
  pairing of ``(l, f)``, ``feature_type`` ``"cross layer transcoder"`` (the type the viewer shows as a feature).
- Attention SAE feature (circuit-tracer has none): ``"A{l}_{f}_{p}"``, ``feature`` ``-3 − cantor(l, f)`` (unlike
  the MLP features' and the errors' in the viewer's ``{layer}_{feature}_{ctx_idx}`` key), ``"attention sae feature"``.
- Error node of site ``s`` (``mlp``/``attn``): ``"err_{s}{l}_{p}"``, ``feature`` −1 (mlp) or −2 (attn),
  ``"{s} reconstruction error"``. circuit-tracer's ``"0_{l}_{p}"`` collides with feature ``l`` of layer 0 at ``p``.
- Embedding: ``"E_{token}_{p}"``, ``layer`` ``"E"``, ``feature`` ``p``. Logit: ``"L_{token}_{p}"``, ``layer``
  ``n_layers + 1``, ``feature`` its token id (else its rank among the logits), ``token_prob`` its probability,
  ``is_target_logit`` for the first logit, ``clerp`` ``Output "{token}" (p=0.123)`` (the viewer reads the token and
  probability from it). ``{token}`` is the node's ``token_id`` when ``graph.nodes`` has one (>= 0), else the token
  string percent-encoded (no commas or spaces).

``influence`` is the node's cumulative influence (circuit-tracer's, :func:`~circuitflow.features.pruning.
cumulative_influence`; none for logits), ``activation`` a feature's activation (none for other nodes). As in
circuit-tracer, links are the kept edges between kept nodes, and kept features and errors without a link are left out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from torch import Tensor

from circuitflow.features.pruning import cumulative_influence, graph_influence

if TYPE_CHECKING:
    from circuitflow.features.attribution import AttributionGraph

SCHEMA_VERSION = 1
INDEX_FILE = "graph-metadata.json"


def cantor_pairing(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Cantor pairing ``(x + y)(x + y + 1)/2 + y`` of non-negative integer arrays (one integer per pair)."""
    return (x + y) * (x + y + 1) // 2 + y


def _node_records(graph: AttributionGraph, keep: np.ndarray) -> pd.DataFrame:
    """One row per kept node with the viewer's node fields (plus ``index``, the node's row in the graph)."""
    nodes = graph.nodes.reset_index(drop=True)
    kind, site = nodes["kind"].to_numpy(), nodes["site"].astype(str).to_numpy()
    layer, pos = nodes["layer"].to_numpy(np.int64), nodes["position"].to_numpy(np.int64)
    feature = nodes["feature"].to_numpy(np.int64)
    token = nodes["token"].astype(str)
    token_id = nodes["token_id"].to_numpy(np.int64) if "token_id" in nodes.columns else np.full(len(nodes), -1)
    key = pd.Series(np.where(token_id >= 0, token_id.astype(str), token.map(lambda text: quote(text, safe=""))))
    is_feature, is_error, is_logit = kind == "feature", kind == "error", kind == "logit"
    is_mlp_feature, is_attn_feature = is_feature & (site == "mlp"), is_feature & (site == "attn")
    paired = cantor_pairing(np.maximum(layer, 0), np.maximum(feature, 0))
    logit_rank = np.cumsum(is_logit) - 1
    vocab = np.where(token_id >= 0, token_id, logit_rank)
    probability = np.zeros(len(nodes))
    probability[is_logit] = graph.logit_probabilities.detach().cpu().double().numpy()
    layer_s, pos_s, feature_s, site_s = (pd.Series(a.astype(str)) for a in (layer, pos, feature, site))
    n_layers = int(layer[is_logit].max()) if is_logit.any() else int(layer.max()) + 1
    cumulative = cumulative_influence(graph_influence(graph)).detach().cpu().double().numpy()
    activation = nodes["activation"].to_numpy(float)
    label = nodes["label"].astype(str) if "label" in nodes.columns else pd.Series([""] * len(nodes))
    records = pd.DataFrame({
        "node_id": np.select(
            [is_mlp_feature, is_attn_feature, is_error, kind == "embedding"],
            [layer_s + "_" + feature_s + "_" + pos_s, "A" + layer_s + "_" + feature_s + "_" + pos_s,
             "err_" + site_s + layer_s + "_" + pos_s, "E_" + key + "_" + pos_s],
            "L_" + key + "_" + pos_s),
        "feature": np.select([is_mlp_feature, is_attn_feature, is_error, is_logit],
                             [paired, -3 - paired, np.where(site == "attn", -2, -1), vocab], pos),
        "layer": np.select([kind == "embedding", is_logit], ["E", str(n_layers + 1)], layer_s),
        "ctx_idx": pos,
        "feature_type": np.select(
            [is_mlp_feature, is_attn_feature, is_error, kind == "embedding"],
            ["cross layer transcoder", "attention sae feature", site_s + " reconstruction error", "embedding"],
            "logit"),
        "token_prob": probability,
        "is_target_logit": is_logit & (logit_rank == 0),
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "clerp": np.where(is_logit, 'Output "' + token + '" (p=' + pd.Series(probability).map("{:.3f}".format) + ")",
                          np.where(is_error & (label == ""), "Err: " + site_s + layer_s + ' "' + token + '"',
                                   label)),
        "influence": np.where(is_logit, None, cumulative.astype(object)),
        "activation": np.where(is_feature, activation.astype(object), None),
        "index": np.arange(len(nodes)),
    })
    records["jsNodeId"] = records["node_id"]
    duplicated = records["node_id"].duplicated(keep=False)
    if duplicated.any():
        raise ValueError(f"graph.nodes gives duplicate node ids {sorted(set(records['node_id'][duplicated]))}; "
                         "each (kind, site, layer, feature, position, token) must be unique")
    return records[keep]


def to_circuit_tracer_json(graph: AttributionGraph, node_mask: Tensor, edge_mask: Tensor, slug: str,
                           scan: str | list[str] | None = None, node_threshold: float | None = None) -> dict[str, Any]:
    """circuit-tracer's graph JSON (a dict) of ``graph`` pruned to ``node_mask`` ``[n]`` and
    ``edge_mask[target, source]`` ``[n, n]`` (from :func:`~circuitflow.features.pruning.prune`).

    ``scan`` names the dictionaries (circuit-tracer's transcoder set; default ``graph.model``); a list of names (one
    per layer) is written as ``transcoder_list`` with scan ``"custom-<hash>"``. ``node_threshold`` is recorded.
    """
    n = len(graph.nodes)
    if tuple(node_mask.shape) != (n,) or tuple(edge_mask.shape) != (n, n):
        raise ValueError(f"node_mask must be [{n}] and edge_mask [{n}, {n}], got {list(node_mask.shape)} and "
                         f"{list(edge_mask.shape)}; pass the masks prune() returns for this graph")
    keep = node_mask.detach().cpu().numpy().astype(bool)
    records = _node_records(graph, keep)
    ids = np.full(n, None, dtype=object)
    ids[records["index"].to_numpy()] = records["node_id"].to_numpy()
    kept_edges = edge_mask.detach().cpu().numpy().astype(bool) & keep[:, None] & keep[None, :]
    targets, sources = kept_edges.nonzero()
    weights = graph.adjacency.detach().cpu().double().numpy()[targets, sources]
    links = pd.DataFrame({"source": ids[sources], "target": ids[targets], "weight": weights})
    linked = set(links["source"]) | set(links["target"])
    records = records[records["node_id"].isin(linked) | records["feature_type"].isin(["embedding", "logit"])]
    transcoders = list(scan) if isinstance(scan, list) else []
    if transcoders:
        scan = "custom-" + hashlib.sha1("-".join(transcoders).encode()).hexdigest()[:16]
    return {
        "metadata": {"slug": slug, "scan": scan if scan is not None else graph.model, "transcoder_list": transcoders,
                     "prompt_tokens": list(graph.tokens), "prompt": graph.prompt, "node_threshold": node_threshold,
                     "schema_version": SCHEMA_VERSION},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": records.drop(columns="index").to_dict("records"),
        "links": links.to_dict("records"),
    }


def write_circuit_tracer_json(graph: AttributionGraph, node_mask: Tensor, edge_mask: Tensor, slug: str,
                              path: str | Path, scan: str | list[str] | None = None,
                              node_threshold: float | None = None) -> Path:
    """Write :func:`to_circuit_tracer_json` to ``path`` (a ``.json`` file) and return the path."""
    path = Path(path)
    data = to_circuit_tracer_json(graph, node_mask, edge_mask, slug, scan=scan, node_threshold=node_threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False))
    return path


def write_graph_index(directory: str | Path) -> Path:
    """Write ``graph-metadata.json`` (the list of graphs circuit-tracer's local server offers) for the graph JSON
    files in ``directory`` and return its path."""
    directory = Path(directory)
    graphs = [json.loads(p.read_text())["metadata"] for p in sorted(directory.glob("*.json")) if p.name != INDEX_FILE]
    index = directory / INDEX_FILE
    index.write_text(json.dumps({"graphs": graphs}, indent=1))
    return index
