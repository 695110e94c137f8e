"""Heuristic neurons (Nikankin et al. 2025, §4–5): which simple rule on the operands or the result each important MLP
neuron implements, and what knocking those neurons out does.

Worked example (a notebook; ``answers`` is an answers table of the workflow, ``neurons`` a neuron-score table)::

    from circuitflow.heuristics.analysis import analyse_heuristics
    result = analyse_heuristics(tracer, tokenizer, answers, neurons, first_layer=1, per_layer=64)
    result.classification.query("matched")    # layer, neuron, heuristic, family, score, coverage, beats_null...
    result.prompt_knockout                    # accuracy when each prompt loses its heuristics' neurons
"""

from circuitflow.heuristics.families import (
    HeuristicSet,
    HeuristicSpec,
    digit_patterns,
    disjoint_groups,
    heuristic_set,
)
from circuitflow.heuristics.knockout import ablated_correct, heuristic_knockout, prompt_knockout
from circuitflow.heuristics.matching import (
    Classification,
    Scorer,
    classify,
    match_scores,
    neuron_activations,
    permutation_null,
    scorer,
    split_halves,
    value_logits,
    value_set_scores,
)

__all__ = [
    "Classification", "HeuristicSet", "HeuristicSpec", "Scorer", "ablated_correct", "classify", "digit_patterns",
    "disjoint_groups", "heuristic_knockout", "heuristic_set", "match_scores", "neuron_activations",
    "permutation_null", "prompt_knockout", "scorer", "split_halves", "value_logits", "value_set_scores",
]
