"""Feature circuits (issue 10): sparse dictionaries (transcoders for MLPs, SAEs for attention outputs), attribution
graphs of the replacement model, interventions on features, and whether the paper's heuristics are features."""

from circuitflow.features.dictionary import DictionaryInfo, SparseDictionary, hook_names

__all__ = ["DictionaryInfo", "SparseDictionary", "hook_names"]
