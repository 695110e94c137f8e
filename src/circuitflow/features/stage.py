"""The dictionary step of the feature-circuit stage: each model's dictionaries, trained here or loaded, and their
quality table (docs/definitions.md#dictionary-quality). Training data are every legal prompt of the configured
operators, activations at every position (the answers tables hold them all, with their answer tokens)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.positions import most_common_length
from circuitflow.features.dictionary import SITES, SparseDictionary
from circuitflow.features.formats import check_fits, load_dictionary
from circuitflow.features.training import DictionarySpec, collect_activations, train_dictionary
from circuitflow.models.contract import input_device

log = logging.getLogger(__name__)
SPEC_KEYS = ("activation", "expansion", "k", "l1", "skip", "steps", "batch_size", "lr")


def operator_tokens(tokenizer, answers: Mapping[str, pd.DataFrame]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per operator, the token ids ``[n, pos]`` of its legal prompts of the most common token length and their answer
    tokens ``[n]`` (prompts whose answer is not one token are dropped)."""
    tokens, answer_ids = {}, {}
    for op, frame in answers.items():
        frame = most_common_length(frame[frame["answer_token"] >= 0])
        tokens[op] = torch.tensor(tokenizer(frame["prompt"].tolist())["input_ids"])
        answer_ids[op] = torch.tensor(frame["answer_token"].to_numpy())
    return tokens, answer_ids


def build_dictionaries(bridge, tokens: Mapping[str, Tensor], config: dict, seed: int, batch_size: int = 1024,
                       progress: bool = True) -> tuple[dict[str, SparseDictionary], dict[str, tuple[Tensor, Tensor]]]:
    """The configured dictionaries (``features.dictionaries``): the ``paths`` entries loaded (and checked against the
    model), every other (site, layer) trained on the activations of ``tokens`` (all operators pooled). Returns the
    dictionaries by name and the pooled training activations by name."""
    spec = DictionarySpec(**{key: config[key] for key in SPEC_KEYS}, seed=seed)
    paths = dict(config.get("paths", {}))
    infos = [spec.info(site, layer) for layer in range(int(bridge.cfg.n_layers)) for site in SITES
             if site in config["sites"]]
    unknown = sorted(set(paths) - {info.name for info in infos})
    if unknown:
        raise ValueError(f"features.dictionaries.paths: {unknown} are not dictionaries of this model and "
                         f"features.dictionaries.sites (have {[info.name for info in infos]})")
    per_op = [collect_activations(bridge, ids, infos, batch_size) for ids in tokens.values()]
    pooled = {info.name: tuple(torch.cat([acts[info.name][i] for acts in per_op]) for i in range(2)) for info in infos}
    dictionaries = {}
    for info in infos:
        if info.name in paths:
            dictionary = load_dictionary(paths[info.name], site=info.site, layer=info.layer)
            check_fits(dictionary, bridge)
            log.info("%s: loaded from %s (%d features)", info.name, paths[info.name], dictionary.n_features)
        else:
            dictionary = train_dictionary(*pooled[info.name], info, spec, progress, device=input_device(bridge))
            log.info("%s: trained on %d activations (%d features)", info.name, len(pooled[info.name][0]),
                     dictionary.n_features)
        dictionaries[info.name] = dictionary
    return dictionaries, pooled

