"""The heuristics stage for one model and operator: choose the important neurons, record their activation maps over
the operand grid, classify them into heuristics and knock them out (the workflow's ``heuristics`` rule); and the
same across training checkpoints (``checkpoint_heuristics``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.tracing import Tracer
from circuitflow.heuristics.families import HeuristicSpec
from circuitflow.heuristics.knockout import heuristic_knockout, prompt_knockout
from circuitflow.heuristics.matching import Classification, classify, neuron_activations, value_logits


class HeuristicsError(ValueError):
    """Inputs the heuristics stage cannot use (one line naming the problem and the fix)."""


@dataclass
class Classified:
    """The classified neurons of one model and operator (:func:`classify_top_neurons`)."""

    chosen: pd.DataFrame  # layer, neuron, importance, rank
    found: Classification
    activations: Tensor  # [P, N] over the answers table's prompts
    correct: np.ndarray  # [P] bool: the model's argmax is the answer

    @property
    def table(self) -> pd.DataFrame:
        return self.found.table.merge(self.chosen, on=["layer", "neuron"], how="left")


@dataclass
class HeuristicsResult:
    classification: pd.DataFrame  # per classified neuron: its matched and best heuristics (Classified.table)
    heuristic_knockout: pd.DataFrame
    prompt_knockout: pd.DataFrame
    maps: pd.DataFrame  # activation over the operand grid of the most important neurons


def top_neurons(neurons: pd.DataFrame, first_layer: int, per_layer: int) -> pd.DataFrame:
    """The ``per_layer`` most important neurons (``importance`` column) of every layer from ``first_layer`` on,
    with their ``rank`` in the layer (0 = most important)."""
    chosen = neurons[neurons["layer"] >= first_layer].sort_values(["layer", "importance", "neuron"],
                                                                  ascending=[True, False, True])
    chosen = chosen.groupby("layer", sort=True).head(per_layer).copy()
    chosen["rank"] = chosen.groupby("layer").cumcount()
    if chosen.empty:
        raise HeuristicsError(f"no neuron at or after layer {first_layer}: lower localization.heuristics_layer")
    return chosen[["layer", "neuron", "importance", "rank"]].reset_index(drop=True)


def classify_top_neurons(tracer: Tracer, tokenizer, answers: pd.DataFrame, neurons: pd.DataFrame, first_layer: int,
                         per_layer: int, *, spec: HeuristicSpec = HeuristicSpec(), threshold: float = 0.6,
                         two_sided: bool = False, null_permutations: int = 20, seed: int = 0,
                         batch_size: int = 512) -> Classified:
    """Classify the top ``per_layer`` neurons per layer from ``first_layer`` on over every legal prompt of one
    operator (``answers``: ``op1, op2, answer, answer_token, prompt``); the rest as for
    :func:`~circuitflow.heuristics.matching.classify`."""
    if answers.empty:
        raise HeuristicsError("the answers table is empty: no legal prompt to classify neurons on")
    chosen = top_neurons(neurons, first_layer, per_layer)
    ids = torch.tensor(chosen[["layer", "neuron"]].to_numpy(dtype=np.int64))
    activations, predicted = neuron_activations(tracer, tokenizer, answers["prompt"].tolist(), ids, batch_size)
    answer_tokens = answers["answer_token"].to_numpy()
    tokens, token_index = np.unique(answer_tokens, return_inverse=True)
    direct = value_logits(tracer, ids, torch.from_numpy(tokens))[:, torch.from_numpy(token_index)].T  # [P, N]
    op1, op2, result = (answers[c].to_numpy() for c in ("op1", "op2", "answer"))
    found = classify(activations, direct, ids, op1, op2, result, spec=spec, threshold=threshold, two_sided=two_sided,
                     null_permutations=null_permutations, seed=seed, device=tracer.device)
    return Classified(chosen, found, activations, predicted.numpy() == answer_tokens)


def _knockout_prompts(tokenizer, answers: pd.DataFrame, classified: Classified) -> tuple[Tensor, Tensor, dict]:
    """Tokens ``[C, pos]``, answer tokens ``[C]`` and heuristic masks ``[C]`` of the C correctly answered prompts."""
    correct = np.flatnonzero(classified.correct)
    masks = {name: mask[correct] for name, mask in classified.found.masks.items()}
    answer_tokens = torch.from_numpy(answers["answer_token"].to_numpy()[correct])
    if len(correct) == 0:
        return torch.zeros(0, 1, dtype=torch.long), answer_tokens, masks
    ids = tokenizer(answers["prompt"].iloc[correct].tolist())["input_ids"]
    if len({len(row) for row in ids}) > 1:
        raise HeuristicsError("the knockouts need prompts of one token length; the operands are not all single tokens "
                              "(lower prompts.operand_max)")
    return torch.tensor(ids, dtype=torch.long), answer_tokens, masks


def knockouts(tracer: Tracer, tokenizer, answers: pd.DataFrame, classified: Classified, *, per_layer: Sequence[int],
              max_prompts: int, seed: int, min_neurons: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(heuristic knockout, prompt knockout) on the correctly answered prompts (at most ``max_prompts`` drawn with
    ``seed`` per condition); the heuristic knockout only when ``min_neurons`` is given. Empty tables when the model
    answers no prompt correctly (an early checkpoint)."""
    tokens, answer_tokens, masks = _knockout_prompts(tokenizer, answers, classified)
    matches = classified.found.matches().merge(classified.chosen, on=["layer", "neuron"])
    by_heuristic = pd.DataFrame()
    if min_neurons is not None and len(tokens):
        by_heuristic = heuristic_knockout(tracer, tokens, answer_tokens, masks, matches=matches,
                                          classified=classified.chosen, min_neurons=min_neurons,
                                          max_prompts=max_prompts, seed=seed)
    if not len(tokens) or matches.empty:
        return by_heuristic, pd.DataFrame(dict(neurons_per_layer=list(per_layer), accuracy=np.nan,
                                               accuracy_random=np.nan, neurons_ablated=0.0, n_prompts=len(tokens)))
    sample = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(tokens))[:max_prompts]))
    by_prompt = prompt_knockout(tracer, tokens[sample], answer_tokens[sample],
                                {name: mask[sample.numpy()] for name, mask in masks.items()}, matches=matches,
                                classified=classified.chosen, per_layer=per_layer, seed=seed)
    return by_heuristic, by_prompt


def activation_maps(answers: pd.DataFrame, classified: Classified, n_neurons: int) -> pd.DataFrame:
    """Rows ``layer, neuron, best_heuristic, best_score, op1, op2, answer, activation`` for the ``n_neurons`` most
    important classified neurons (by rank in their layer, then layer)."""
    best = classified.table.sort_values("score", ascending=False).drop_duplicates(["layer", "neuron"])
    shown = best.sort_values(["rank", "layer"]).head(n_neurons)
    pairs = classified.chosen[["layer", "neuron"]].itertuples(index=False)
    column = {(layer, neuron): i for i, (layer, neuron) in enumerate(pairs)}
    shown = shown[["layer", "neuron", "heuristic", "score"]].itertuples(index=False)
    maps = [pd.DataFrame(dict(layer=layer, neuron=neuron, best_heuristic=heuristic, best_score=score,
                              op1=answers["op1"].to_numpy(), op2=answers["op2"].to_numpy(),
                              answer=answers["answer"].to_numpy(),
                              activation=classified.activations[:, column[(layer, neuron)]].numpy()))
            for layer, neuron, heuristic, score in shown]
    columns = ["layer", "neuron", "best_heuristic", "best_score", "op1", "op2", "answer", "activation"]
    return pd.concat(maps, ignore_index=True) if maps else pd.DataFrame(columns=columns)


def analyse_heuristics(tracer: Tracer, tokenizer, answers: pd.DataFrame, neurons: pd.DataFrame, first_layer: int,
                       per_layer: int, *, spec: HeuristicSpec = HeuristicSpec(), threshold: float = 0.6,
                       two_sided: bool = False, null_permutations: int = 20, min_neurons: int = 3,
                       max_prompts: int = 200, knockout_per_layer: Sequence[int] = (1, 2, 5, 10), map_neurons: int = 6,
                       seed: int = 0, batch_size: int = 512) -> HeuristicsResult:
    """The whole stage for one model and operator: :func:`classify_top_neurons`, :func:`knockouts` and
    :func:`activation_maps`."""
    classified = classify_top_neurons(tracer, tokenizer, answers, neurons, first_layer, per_layer, spec=spec,
                                      threshold=threshold, two_sided=two_sided, null_permutations=null_permutations,
                                      seed=seed, batch_size=batch_size)
    if not classified.correct.any():
        raise HeuristicsError("the model answers no prompt of this operator correctly: nothing to knock out")
    by_heuristic, by_prompt = knockouts(tracer, tokenizer, answers, classified, per_layer=knockout_per_layer,
                                        max_prompts=max_prompts, seed=seed, min_neurons=min_neurons)
    return HeuristicsResult(classified.table, by_heuristic, by_prompt,
                            activation_maps(answers, classified, map_neurons))


def compare_to_final(classified: Classified, final: pd.DataFrame) -> dict[str, float]:
    """How much of the final model's classification (``final``: its heuristics table) a checkpoint already has:
    ``final_matches_present`` (share of its matched (layer, neuron, heuristic) triples matched here too),
    ``final_heuristics_present`` (share of its matched heuristics matched here by any neuron), and this
    checkpoint's ``n_classified``, ``n_matched_neurons`` and ``model_accuracy`` (on every legal prompt)."""
    here = classified.found.matches()
    final = final[final["matched"]]
    keys = ["layer", "neuron", "heuristic"]
    shared = final[keys].merge(here[keys].drop_duplicates(), on=keys)
    return dict(n_classified=len(classified.chosen), n_matched_neurons=len(here[["layer", "neuron"]].drop_duplicates()),
                final_matches_present=len(shared) / len(final) if len(final) else np.nan,
                final_heuristics_present=(final["heuristic"].drop_duplicates().isin(set(here["heuristic"])).mean()
                                          if len(final) else np.nan),
                model_accuracy=float(classified.correct.mean()))
