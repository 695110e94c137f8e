"""circuitflow: find and explain the circuits language models use for arithmetic.

The library behind the Snakemake workflow. The names a notebook needs are importable from the top level; each is
imported on first use, so ``import circuitflow`` stays cheap (it does not import torch)::

    from circuitflow import Tracer, attribute, faithfulness_curve, load_bridge, load_tokenizer, logit_diff
    from circuitflow import pair_batches, read_handle
    handle = read_handle("results/models/toy/model.json")
    bridge = load_bridge(handle, device="cpu")
    batches = pair_batches(prompts, load_tokenizer(handle), batch_size=64)   # prompts: a workflow prompt table
    graph = attribute(bridge, batches, logit_diff, method="EAP-IG-inputs", tracer=Tracer(bridge))

Every formula the docstrings cite is in ``docs/definitions.md``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it: the top-level API, imported lazily by __getattr__
EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ModelHandle", "read_handle", "load_bridge", "load_hf_model", "load_tokenizer"),
                    "circuitflow.models"),
    **dict.fromkeys(("PromptConfig", "build_prompt_set", "resolve_answer_max"), "circuitflow.prompts"),
    **dict.fromkeys(("Graph", "METHODS", "MIB_FRACTIONS", "Tracer", "agreement", "area_scores", "attribute",
                     "evaluate_graph", "faithfulness_curve", "from_eap_json", "neuron_attribution", "pair_batches",
                     "to_eap_json"), "circuitflow.circuits"),
    **dict.fromkeys(("accuracy", "get_metric", "ie", "kl", "logit_diff", "nl", "prob"), "circuitflow.metrics"),
    **dict.fromkeys(("ie_map", "top_heads"), "circuitflow.localization.ie_maps"),
    **dict.fromkeys(("neuron_table",), "circuitflow.localization.neuron_scores"),
    **dict.fromkeys(("heuristics_layer", "probe_table"), "circuitflow.localization.probing"),
    **dict.fromkeys(("paper_faithfulness",), "circuitflow.localization.mean_ablation"),
    **dict.fromkeys(("attention_grid", "ov_table"), "circuitflow.localization.attention"),
    **dict.fromkeys(("analyse_heuristics",), "circuitflow.heuristics.analysis"),
    **dict.fromkeys(("HeuristicSpec", "classify", "heuristic_knockout", "prompt_knockout"), "circuitflow.heuristics"),
}

__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    """Import a top-level API name from its module on first use (PEP 562)."""
    if name not in EXPORTS:
        raise AttributeError(f"module 'circuitflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
