"""Feature circuits (docs/definitions.md#sparse-dictionaries and the sections after it): sparse dictionaries
(transcoders for MLPs, SAEs for attention outputs) trained here or loaded from published files, attribution graphs of
the replacement model with pruning, scores and circuit-tracer JSON, feature-circuit faithfulness, interventions on
features, and whether the paper's heuristics are features."""

from circuitflow.features.attribution import AttributionGraph, ReplacementModel, attribution_graph
from circuitflow.features.dictionary import (
    DictionaryInfo,
    SparseDictionary,
    hook_names,
    load_dictionaries,
    save_dictionaries,
)
from circuitflow.features.formats import check_fits, load_dictionary
from circuitflow.features.graph_analysis import (
    ablation_agreement,
    analyse_prompts,
    circuit_faithfulness,
    total_attribution,
)
from circuitflow.features.heuristic_features import (
    classify_features,
    compare_with_neurons,
    feature_activations,
    knockout_comparison,
    neuron_splits,
)
from circuitflow.features.interventions import (
    FeatureIntervention,
    grab_and_delete,
    intervene,
    intervention_effects,
)
from circuitflow.features.pruning import (
    completeness_score,
    graph_influence,
    prune,
    prune_to_budget,
    replacement_score,
)
from circuitflow.features.quality import dictionary_quality, quality_table, splice_accuracy, spliced
from circuitflow.features.tracer_json import to_circuit_tracer_json, write_circuit_tracer_json
from circuitflow.features.training import DictionarySpec, collect_activations, train_dictionaries, train_dictionary
from circuitflow.features.typed_edges import edge_type_shares, typed_edges

__all__ = [
    "AttributionGraph", "DictionaryInfo", "DictionarySpec", "FeatureIntervention", "ReplacementModel",
    "SparseDictionary", "ablation_agreement", "analyse_prompts", "attribution_graph", "check_fits",
    "circuit_faithfulness", "classify_features", "collect_activations", "compare_with_neurons",
    "completeness_score", "dictionary_quality", "edge_type_shares", "feature_activations", "grab_and_delete",
    "graph_influence", "hook_names", "intervene", "intervention_effects", "knockout_comparison",
    "load_dictionaries", "load_dictionary", "neuron_splits", "prune", "prune_to_budget", "quality_table",
    "replacement_score", "save_dictionaries", "splice_accuracy", "spliced", "to_circuit_tracer_json",
    "total_attribution", "train_dictionaries", "train_dictionary", "typed_edges", "write_circuit_tracer_json",
]
