"""What an attribution graph is worth in the real model (docs/definitions.md#feature-circuit-faithfulness).

Two checks, both on the graph's prompt and its top logit (the most probable token; metric m = that logit minus the
mean logit):

* **Faithfulness of feature circuits.** The circuit of size n keeps the n feature nodes of highest influence; every
  other active feature is ablated in the real model (its decoder contribution removed at its position, errors and
  everything else live, :func:`circuitflow.features.interventions.intervene`). With m(full) the unablated model
  and m(∅) the model with every active feature ablated, f(C) = (m(C) − m(∅)) / (m(full) − m(∅)), so the full
  circuit has f = 1 and the empty one f = 0 by construction.
* **Attribution vs exact ablation.** The graph predicts, linearly, how much the metric drops when one feature is
  ablated: its *total* attribution a_s · r_s, where r = D_logit (I − D)⁻¹ propagates per-unit effects
  D[t, s] = adjacency[t, s] / a_s through the features the ablation reaches (an active feature's activation moves
  with its pre-activation). The exact drop comes from one real forward per feature, all features in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitflow.features.attribution import AttributionGraph, ReplacementModel, attribution_graph
from circuitflow.features.dictionary import SparseDictionary, hook_names
from circuitflow.features.interventions import FeatureIntervention, intervene
from circuitflow.features.pruning import completeness_score, graph_influence, prune, replacement_score
from circuitflow.features.tracer_json import write_circuit_tracer_json, write_graph_index
from circuitflow.features.typed_edges import edge_type_shares, typed_edges
from circuitflow.models.contract import input_device


def _metric(logits: Tensor, token: int) -> Tensor:
    """The top logit minus the mean logit at the last position, per batch row ``[batch]``."""
    last = logits[:, -1].double()
    return last[:, token] - last.mean(-1)


def _prompt_ids(tokenizer, graph: AttributionGraph) -> Tensor:
    return tokenizer(graph.prompt, return_tensors="pt")["input_ids"][0]


def _top_token(graph: AttributionGraph) -> int:
    return int(graph.nodes.loc[graph.index("logit")[0].item(), "token_id"])


@torch.no_grad()
def circuit_faithfulness(bridge, tokenizer, dictionaries: Mapping[str, SparseDictionary], graph: AttributionGraph,
                         influence: Tensor, fractions: Sequence[float]) -> pd.DataFrame:
    """Faithfulness of the feature circuits of the top ``fraction`` of the graph's active features by ``influence``
    ``[n_nodes]``: columns fraction, n_features, metric, faithfulness (see the module docstring)."""
    ids = _prompt_ids(tokenizer, graph)[None].to(input_device(bridge))
    token = _top_token(graph)
    features = graph.nodes.loc[graph.index("feature").numpy()]
    order = features.index[np.argsort(-influence[graph.index("feature")].numpy(), kind="stable")]
    sizes = sorted({*(int(round(f * len(order))) for f in fractions), 0, len(order)})

    def metric(size: int) -> float:
        dropped = graph.nodes.loc[order[size:]]
        edits = [FeatureIntervention(row.dictionary, int(row.feature), "ablate", (int(row.position),))
                 for row in dropped.itertuples()]
        with intervene(bridge, dictionaries, edits):
            return float(_metric(bridge(ids), token)[0])

    values = {size: metric(size) for size in sizes}
    full, empty = values[len(order)], values[0]
    rows = [dict(n_features=size, fraction=size / max(len(order), 1), metric=value,
                 faithfulness=(value - empty) / (full - empty) if full != empty else float("nan"))
            for size, value in values.items()]
    return pd.DataFrame(rows)


def total_attribution(graph: AttributionGraph, logit: int = 0) -> Tensor:
    """Each active feature's total linear attribution to logit node ``logit`` (0: the top logit), ``[n_features]``:
    a_s · r_s with r = D_logit (I − D)⁻¹ (see the module docstring); the features in the graph's order."""
    feats = graph.index("feature")
    acts = torch.as_tensor(graph.nodes.loc[feats.numpy(), "activation"].to_numpy(), dtype=torch.float64)
    per_unit = graph.adjacency[feats][:, feats] / acts  # D[t, s], feature targets and sources
    to_logit = graph.adjacency[graph.index("logit")[logit], feats] / acts  # [n_features]
    eye = torch.eye(len(feats), dtype=torch.float64)
    reach = torch.linalg.solve((eye - per_unit).T, to_logit)  # r = D_logit (I − D)⁻¹
    return reach * acts


@torch.no_grad()
def ablation_effects(bridge, tokenizer, dictionaries: Mapping[str, SparseDictionary], graph: AttributionGraph,
                     frozen: bool = False) -> Tensor:
    """The exact drop of the metric when each active feature alone is ablated in the real model, ``[n_features]``
    (graph order): one batch row per feature, its decoder contribution removed at its position. With ``frozen``,
    attention patterns and norm scales are held at their values on the prompt (as in the replacement model), so
    the ablation differs from the graph's linear prediction only where downstream MLPs and their transcoders do."""
    device = input_device(bridge)
    ids = _prompt_ids(tokenizer, graph).to(device)
    feats = graph.nodes.loc[graph.index("feature").numpy()]
    n, n_pos = len(feats), len(ids)
    hooks = ReplacementModel(bridge, dictionaries, ids).freezing_hooks(n) if frozen else []
    for name, d in dictionaries.items():
        rows = np.flatnonzero(feats["dictionary"].to_numpy() == name)
        if len(rows) == 0:
            continue
        delta = torch.zeros(n, n_pos, d.d_out, dtype=d.W_dec.dtype, device=device)
        acts = torch.as_tensor(feats["activation"].to_numpy()[rows], dtype=d.W_dec.dtype, device=device)
        index = torch.as_tensor(feats["feature"].to_numpy()[rows], device=device)
        delta[torch.as_tensor(rows, device=device), torch.as_tensor(feats["position"].to_numpy()[rows],
                                                                     device=device)] = -acts[:, None] * d.W_dec[index]
        hooks.append((hook_names(d.info)[1], partial(_add, delta)))
    clean = _metric(bridge(ids[None]), _top_token(graph))
    with bridge.hooks(fwd_hooks=hooks):
        ablated = _metric(bridge(ids[None].expand(n, -1)), _top_token(graph))
    return (clean - ablated).cpu()


def _add(delta: Tensor, tensor: Tensor, hook) -> Tensor:
    return tensor + delta.reshape(tensor.shape).to(tensor.dtype)


def ablation_agreement(bridge, tokenizer, dictionaries: Mapping[str, SparseDictionary],
                       graph: AttributionGraph) -> pd.DataFrame:
    """One row per active feature: its total attribution to the top logit and the exact drop when it is ablated in
    the real model (``ablation``) and with frozen attention and norms (``ablation_frozen``), with the Pearson
    correlations over the graph's features in every row (``pearson``, ``pearson_frozen``)."""
    feats = graph.nodes.loc[graph.index("feature").numpy(), ["label", "dictionary", "layer", "position", "feature"]]
    attribution = total_attribution(graph).numpy()
    ablation = ablation_effects(bridge, tokenizer, dictionaries, graph).numpy()
    frozen = ablation_effects(bridge, tokenizer, dictionaries, graph, frozen=True).numpy()
    return feats.assign(attribution=attribution, ablation=ablation, ablation_frozen=frozen,
                        pearson=_pearson(attribution, ablation),
                        pearson_frozen=_pearson(attribution, frozen)).reset_index(drop=True)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two vectors (NaN with fewer than 3 entries or no spread)."""
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")


def analyse_prompts(bridge, tokenizer, dictionaries: Mapping[str, SparseDictionary], prompts: Sequence[str],
                    folder: Path | str, *, node_threshold: float, edge_threshold: float, fractions: Sequence[float],
                    max_logits: int = 10, logit_probability: float = 0.95, qk_edges: bool = True,
                    model_name: str = "", progress: bool = True) -> dict[str, pd.DataFrame]:
    """Attribution graphs of ``prompts`` saved into ``folder`` (``graph_{i}.pt`` and circuit-tracer
    ``graph_{i}.json`` + ``graph-metadata.json``), and five tables: ``nodes`` (every node with its influence and
    whether pruning keeps it), ``edges`` (the pruned graph's typed edges), ``scores`` (per graph),
    ``faithfulness`` (feature-circuit curves), ``ablation`` (attribution vs exact ablation). Columns are described
    in README ("Feature circuits")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[pd.DataFrame]] = {"nodes": [], "edges": [], "scores": [], "faithfulness": [],
                                             "ablation": []}
    for i, prompt in enumerate(tqdm(prompts, desc="attribution graphs", disable=not progress, mininterval=5)):
        graph = attribution_graph(bridge, tokenizer, prompt, dictionaries, max_logits=max_logits,
                                  logit_probability=logit_probability, qk_edges=qk_edges, model_name=model_name)
        influence = graph_influence(graph)
        node_mask, edge_mask = prune(graph, node_threshold, edge_threshold)
        graph.save(folder / f"graph_{i}.pt")
        write_circuit_tracer_json(graph, node_mask, edge_mask, f"{model_name}-{i}", folder / f"graph_{i}.json",
                                  node_threshold=node_threshold)
        labels = dict(graph=i, prompt=prompt)
        tables["nodes"].append(graph.nodes.assign(influence=influence.numpy(), kept=node_mask.numpy(), **labels))
        tables["edges"].append(typed_edges(graph, node_mask, edge_mask).assign(**labels))
        shares = edge_type_shares(graph) if qk_edges else dict.fromkeys(("ov_share", "q_share", "k_share"), np.nan)
        tables["scores"].append(pd.DataFrame([dict(
            labels, replacement_score=replacement_score(graph), completeness_score=completeness_score(graph),
            completeness_error=graph.completeness_error, n_nodes=graph.n_nodes, n_kept_nodes=int(node_mask.sum()),
            n_edges=int((graph.adjacency != 0).sum()), n_kept_edges=int(edge_mask.sum()),
            n_features=len(graph.index("feature")), top_token=graph.nodes.loc[graph.index("logit")[0].item(), "token"],
            **shares,
        )]))
        tables["faithfulness"].append(circuit_faithfulness(bridge, tokenizer, dictionaries, graph, influence,
                                                           fractions).assign(**labels))
        tables["ablation"].append(ablation_agreement(bridge, tokenizer, dictionaries, graph).assign(**labels))
    write_graph_index(folder)
    return {name: pd.concat(frames, ignore_index=True) for name, frames in tables.items()}
