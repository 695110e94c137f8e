"""The circuit engine: edge attribution (EAP, EAP-IG, exact patching), graphs, circuits and faithfulness on
TransformerLens 4's ``TransformerBridge``.

Worked example (a notebook; ``prompts`` is a prompt table from the workflow)::

    from circuitflow.circuits import Tracer, attribute, faithfulness_curve, pair_batches, to_eap_json
    from circuitflow.metrics import logit_diff
    tracer = Tracer(bridge)
    batches = pair_batches(prompts, load_tokenizer(handle), batch_size=64)   # the model's own tokenizer
    graph = attribute(bridge, batches, logit_diff, method="EAP-IG-inputs", ig_steps=5, tracer=tracer)
    curve = faithfulness_curve(bridge, graph, batches, logit_diff, tracer=tracer)
    nodes = faithfulness_curve(bridge, graph, batches, logit_diff, level="node", tracer=tracer)  # node fractions
    graph.select("topn", 10, level="node")   # a node-level circuit: its 10 nodes keep all their outgoing edges
    units = faithfulness_curve(bridge, graph, batches, logit_diff, level="neuron", tracer=tracer)  # n_up*d_model units
    graph.select("topn", 500, level="neuron")   # 500 (node, output dimension) units, the others intervened on
    to_eap_json(graph, "graph.json", d_model=bridge.cfg.d_model)   # EAP-IG / MIB's JSON (from_eap_json reads it)
    graph = attribute(bridge, batches, logit_diff, "EAP-IG-inputs", hidden=True, tracer=tracer)  # + hidden_scores
    graph.select("topn", 200, level="mlp-neuron")   # heads, input and MLP hidden neurons (hook_mlp_post) together
    hidden = faithfulness_curve(bridge, graph, batches, logit_diff, level="mlp-neuron", tracer=tracer)
"""

from circuitflow.circuits.agreement import agreement
from circuitflow.circuits.anatomy import Anatomy
from circuitflow.circuits.attribution import METHODS, Method, attribute, exact_edge_scores
from circuitflow.circuits.data import (
    PairBatch,
    PairError,
    indexed_token_batches,
    pair_batches,
    split_batches,
    token_batches,
)
from circuitflow.circuits.evaluation import (
    MIB_FRACTIONS,
    area_scores,
    evaluate_graph,
    evaluate_masks,
    faithfulness_curve,
)
from circuitflow.circuits.graph import LEVELS, Graph, Level
from circuitflow.circuits.interop import from_eap_json, to_eap_json
from circuitflow.circuits.neurons import neuron_attribution, post_activations
from circuitflow.circuits.tracing import INTERVENTIONS, Intervention, Tracer

__all__ = [
    "Anatomy", "Graph", "INTERVENTIONS", "Intervention", "LEVELS", "Level", "METHODS", "MIB_FRACTIONS", "Method",
    "PairBatch", "PairError", "Tracer", "agreement", "area_scores", "attribute", "evaluate_graph", "evaluate_masks",
    "exact_edge_scores", "faithfulness_curve", "from_eap_json", "indexed_token_batches", "neuron_attribution",
    "pair_batches", "post_activations", "split_batches", "to_eap_json", "token_batches",
]
