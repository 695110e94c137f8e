"""Heuristics as features (docs/definitions.md#heuristics-as-features): do sparse-dictionary features implement the
arithmetic heuristics that Nikankin et al. (2025) find in MLP neurons, and are they cleaner units than the neurons?

A feature f of a dictionary plays the role of a neuron (docs/definitions.md#heuristic-match):

* its *activation* a_f(p) is its value at the last position of prompt p (:func:`feature_activations`);
* its *value vector* v_f is what one unit of it writes into the residual stream: a transcoder's decoder row W_dec[f]
  (``d_model``); an attention SAE's decoder row split per head, ``[n_heads, d_head]``, through each head's W_O and
  summed (:func:`value_vectors`);
* its *direct logit* for token t is v_f · W_U[:, t] (final norm ignored, as for neurons), and its *result score*
  a_f(p) · v_f · W_U[:, answer(p)] (:func:`direct_logits`).

The important features of each dictionary are the ``top_n`` with the largest mean over prompts of
|a_f(p) · v_f · W_U[:, answer(p)]|, their direct logit attribution to the correct answer (:func:`feature_importance`).
They are matched against every heuristic with the neurons' matcher and permutation null
(:func:`circuitflow.heuristics.matching.classify`, same spec and threshold; :func:`classify_features`), and
compared with the neurons (:func:`compare_with_neurons`): the share of units implementing a heuristic, how many
features a heuristic neuron of MLP l splits into (:func:`neuron_splits`) and how specific knocking out a
heuristic's features is next to knocking out its neurons (:func:`knockout_comparison`).

:func:`analyse_features` runs the whole comparison for one model and operator (the workflow's ``feature_heuristics``
rule), against the neurons' classification table that the ``heuristics`` rule wrote (:func:`classified_from_table`).

A feature is knocked out by subtracting its decoder contribution a_f · W_dec[f] from the real output of its
component (``hook_mlp_out`` of a transcoder, ``hook_z`` of an attention SAE) at every position, with a_f encoded from
the component's input in the knocked-out run; the dictionary's reconstruction error and the other features stay in
place, so a feature whose decoder row is zero changes nothing (:func:`ablated_features_correct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.anatomy import Anatomy, probe_rows
from circuitflow.circuits.data import indexed_token_batches
from circuitflow.circuits.tracing import Tracer
from circuitflow.features.dictionary import SparseDictionary, hook_names
from circuitflow.heuristics.analysis import Classified, _knockout_prompts, activation_maps
from circuitflow.heuristics.families import HeuristicSpec, heuristic_set
from circuitflow.heuristics.knockout import ablated_correct
from circuitflow.heuristics.matching import Classification, classify
from circuitflow.localization.attention import unembedding
from circuitflow.models.contract import input_device

INDEX_COLUMNS = ["dictionary", "site", "layer", "feature"]


def feature_index(dictionaries: Sequence[SparseDictionary]) -> pd.DataFrame:
    """One row per feature of every dictionary, in order: ``dictionary, site, layer, feature``."""
    _check_names(dictionaries)
    frames = [pd.DataFrame(dict(dictionary=d.info.name, site=d.info.site, layer=d.info.layer,
                                feature=np.arange(d.n_features))) for d in dictionaries]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)


def _check_names(dictionaries: Sequence[SparseDictionary]) -> None:
    names = [d.info.name for d in dictionaries]
    if len(set(names)) < len(names):
        raise ValueError(f"dictionaries: two dictionaries share a site and layer ({names}); pass one per component")


def _input(tensor: Tensor, dictionary: SparseDictionary) -> Tensor:
    """A hook's activation as the dictionary's input ``[b, pos, d_in]`` (``hook_z`` flattened over heads)."""
    x = tensor.flatten(-2) if dictionary.info.site == "attn" else tensor
    return x.to(dictionary.W_enc.device, dictionary.W_enc.dtype)


@torch.no_grad()
def feature_activations(bridge, tokenizer, texts: Sequence[str], dictionaries: Sequence[SparseDictionary], *,
                        batch_size: int = 512) -> tuple[Tensor, pd.DataFrame]:
    """``(activations [F, P], index)``: every feature's activation at the last position of each prompt (one forward
    per batch, each dictionary encoding its input hook), F = all features of ``dictionaries`` in the order of
    ``index`` (:func:`feature_index`), P = ``texts`` in order (several token lengths are fine)."""
    index = feature_index(dictionaries)
    offsets = np.cumsum([0] + [d.n_features for d in dictionaries])
    out = torch.empty(len(index), len(texts))
    device = input_device(bridge)
    for rows, tokens in indexed_token_batches(tokenizer, list(texts), batch_size):
        def encode(i, tensor, hook):
            d = dictionaries[i]
            out[offsets[i] : offsets[i + 1], rows] = d.encode(_input(tensor[:, -1:], d))[:, 0].T.float().cpu()

        with bridge.hooks(fwd_hooks=[(hook_names(d.info)[0], partial(encode, i)) for i, d in enumerate(dictionaries)]):
            bridge(tokens.to(device))
    return out, index


@torch.no_grad()
def value_vectors(bridge, dictionaries: Sequence[SparseDictionary], anatomy: Anatomy | None = None) -> Tensor:
    """``[F, d_model]``: what one unit of each feature writes into the residual stream — a transcoder's W_dec[f]; an
    attention SAE's W_dec[f] split into ``[n_heads, d_head]`` and mapped through each head's W_O, summed."""
    anatomy = anatomy or Anatomy.from_bridge(bridge)
    parts = []
    for d in dictionaries:
        w_dec = d.W_dec.detach()
        if d.info.site == "attn":
            w_o = anatomy.layers[d.info.layer].W_O  # [n_heads, d_head, d_model]
            w_dec = torch.einsum("fhe,hed->fd", w_dec.view(-1, *w_o.shape[:2]).to(w_o.device, w_o.dtype), w_o)
        parts.append(w_dec.double().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, anatomy.d_model, dtype=torch.double)


@torch.no_grad()
def direct_logits(bridge, dictionaries: Sequence[SparseDictionary], token_ids: Tensor,
                  anatomy: Anatomy | None = None) -> Tensor:
    """``[F, T]``: v_f · W_U[:, t], the logit of token t (``token_ids`` ``[T]``) that one unit of feature f writes
    (final norm ignored), as :func:`~circuitflow.heuristics.matching.value_logits` for neurons."""
    w_u = unembedding(bridge)
    return (value_vectors(bridge, dictionaries, anatomy) @ w_u[:, token_ids.to(w_u.device)].double().cpu()).float()


def answer_logits(bridge, dictionaries: Sequence[SparseDictionary], answer_tokens: np.ndarray,
                  anatomy: Anatomy | None = None) -> Tensor:
    """``[F, P]``: each feature's direct logit for the answer token of each prompt (``answer_tokens`` ``[P]``)."""
    tokens, token_index = np.unique(answer_tokens, return_inverse=True)
    return direct_logits(bridge, dictionaries, torch.from_numpy(tokens), anatomy)[:, torch.from_numpy(token_index)]


def feature_importance(activations: Tensor, logits: Tensor, index: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """The ``top_n`` features of each dictionary by ``importance`` = mean over prompts of |a_f(p) · direct logit of
    the correct answer| (``activations`` and ``logits`` ``[F, P]``, rows as ``index``), with their ``rank`` in the
    dictionary (0 = most important; ties by feature) and ``row`` (their row in ``activations``), dictionaries in the
    order of ``index``."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1 (features kept per dictionary), got {top_n}")
    table = index.assign(importance=(activations * logits).abs().mean(1).double().numpy(), row=np.arange(len(index)))
    table = table.sort_values(["dictionary", "importance", "feature"], ascending=[True, False, True], kind="stable")
    chosen = table.groupby("dictionary", sort=False).head(top_n).copy()
    chosen["rank"] = chosen.groupby("dictionary").cumcount()
    order = {name: i for i, name in enumerate(pd.unique(index["dictionary"]))}
    return chosen.sort_values(["dictionary", "rank"], key=lambda c: c.map(order) if c.name == "dictionary" else c,
                              ignore_index=True)


@dataclass
class FeatureClassification:
    """The important features of one model and operator, classified (:func:`classify_features`)."""

    chosen: pd.DataFrame  # dictionary, site, layer, feature, importance, row, rank
    found: Classification  # its table's ``layer`` and ``neuron`` are both the row in ``chosen``
    activations: Tensor  # [P, N]: the chosen features over the answers table's prompts
    correct: np.ndarray  # [P] bool: the model's argmax is the answer

    def _units(self) -> Classified:
        """The classification keyed like neurons (``layer`` = ``neuron`` = row in ``chosen``) for the neuron tools."""
        units = self.chosen.assign(layer=np.arange(len(self.chosen)), neuron=np.arange(len(self.chosen)))
        return Classified(units[["layer", "neuron", "importance", "rank"]], self.found, self.activations, self.correct)

    def _named(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` keyed by row in ``chosen`` (its ``layer`` column) with the features' names instead."""
        names = self.chosen[INDEX_COLUMNS + ["importance", "rank"]].iloc[frame["layer"].to_numpy()]
        rest = frame.drop(columns=["layer", "neuron"]).reset_index(drop=True)
        return pd.concat([names.reset_index(drop=True), rest.drop(columns=names.columns, errors="ignore")], axis=1)

    @property
    def table(self) -> pd.DataFrame:
        """Per classified feature its matched and best heuristics: ``dictionary, site, layer, feature, importance,
        rank, heuristic, family, score, coverage, matched, p_value, null_best, beats_null, kind``."""
        return self._named(self.found.table)

    def maps(self, answers: pd.DataFrame, n_features: int) -> pd.DataFrame:
        """Activation maps of the ``n_features`` most important features (by rank in their dictionary): rows
        ``dictionary, site, layer, feature, importance, rank, best_heuristic, best_score, op1, op2, answer,
        activation``, as :func:`~circuitflow.heuristics.analysis.activation_maps` for neurons."""
        return self._named(activation_maps(answers, self._units(), n_features))


def classify_features(bridge, tokenizer, answers: pd.DataFrame, dictionaries: Sequence[SparseDictionary], top_n: int,
                      *, spec: HeuristicSpec = HeuristicSpec(), threshold: float = 0.6, two_sided: bool = False,
                      null_permutations: int = 20, seed: int = 0, batch_size: int = 512) -> FeatureClassification:
    """Choose the ``top_n`` most important features of each dictionary over every legal prompt of one operator
    (``answers``: ``op1, op2, answer, answer_token, prompt, correct``) and match them against the heuristics with
    the neurons' matcher and permutation null (:func:`~circuitflow.heuristics.matching.classify`; arguments as
    there)."""
    if answers.empty:
        raise ValueError("answers: the answers table is empty, no legal prompt to classify features on")
    anatomy = Anatomy.from_bridge(bridge)
    activations, index = feature_activations(bridge, tokenizer, answers["prompt"].tolist(), dictionaries,
                                             batch_size=batch_size)
    logits = answer_logits(bridge, dictionaries, answers["answer_token"].to_numpy(), anatomy)
    chosen = feature_importance(activations, logits, index, top_n)
    rows = torch.tensor(chosen["row"].to_numpy())
    return classify_feature_activations(activations[rows].T, logits[rows].T, chosen, answers, spec=spec,
                                        threshold=threshold, two_sided=two_sided, null_permutations=null_permutations,
                                        seed=seed, device=input_device(bridge))


def classify_feature_activations(activations: Tensor, logits: Tensor, chosen: pd.DataFrame, answers: pd.DataFrame,
                                 *, spec: HeuristicSpec = HeuristicSpec(), threshold: float = 0.6,
                                 two_sided: bool = False, null_permutations: int = 20, seed: int = 0,
                                 device: str | torch.device = "cpu") -> FeatureClassification:
    """The matching step of :func:`classify_features` on activations computed elsewhere: ``activations`` and
    ``logits`` (direct logit of each prompt's answer) ``[P, N]`` of the N features described by ``chosen`` (columns
    ``dictionary, site, layer, feature, importance, rank``); ``answers``' ``correct`` column, when present, marks
    the prompts the model answers (the knockouts' prompts; none without it)."""
    units = torch.arange(len(chosen))
    op1, op2, result = (answers[c].to_numpy() for c in ("op1", "op2", "answer"))
    found = classify(activations, logits, torch.stack([units, units], 1), op1, op2, result, spec=spec,
                     threshold=threshold, two_sided=two_sided, null_permutations=null_permutations, seed=seed,
                     device=device)
    correct = answers["correct"].to_numpy(dtype=bool) if "correct" in answers else np.zeros(len(answers), bool)
    return FeatureClassification(chosen.reset_index(drop=True), found, activations, correct)


def _heuristic_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a classification table that implement a heuristic: matched (score ≥ threshold) and above the
    unit's permutation null."""
    return table[table["matched"] & table["beats_null"]]


def compare_with_neurons(feature_table: pd.DataFrame, neuron_table: pd.DataFrame, *, operator: str = ""
                         ) -> pd.DataFrame:
    """One row for one operator: how many classified units (features: ``dictionary, feature``; neurons: ``layer,
    neuron``; a unit with a row in its table) implement a heuristic (a matched row above the null), as counts and
    shares — ``n_features, n_heuristic_features, share_features, n_neurons, n_heuristic_neurons, share_neurons``,
    and ``n_heuristics_features`` / ``n_heuristics_neurons`` (distinct heuristics implemented)."""
    counts = {}
    for unit, table, keys in (("features", feature_table, ["dictionary", "feature"]),
                              ("neurons", neuron_table, ["layer", "neuron"])):
        total = len(table[keys].drop_duplicates())
        implementing = _heuristic_rows(table)
        n = len(implementing[keys].drop_duplicates())
        counts.update({f"n_{unit}": total, f"n_heuristic_{unit}": n, f"share_{unit}": n / total if total else np.nan,
                       f"n_heuristics_{unit}": implementing["heuristic"].nunique()})
    return pd.DataFrame([dict(operator=operator, **counts)])


def neuron_splits(feature_table: pd.DataFrame, neuron_table: pd.DataFrame, bridge,
                  dictionaries: Sequence[SparseDictionary], *, cosine: float = 0.5) -> pd.DataFrame:
    """Per heuristic neuron (MLP l, neuron n; rows of ``neuron_table`` implementing a heuristic): into how many
    features it splits — ``n_features_same_heuristic``, the classified features of transcoder l implementing one of
    its heuristics, and ``n_features_cosine``, the features of transcoder l (all of them) whose decoder row has
    cosine ≥ ``cosine`` with the neuron's W_out row (NaN without a transcoder for layer l); ``heuristics`` lists the
    neuron's heuristics."""
    neurons = _heuristic_rows(neuron_table)
    per_neuron = neurons.groupby(["layer", "neuron"], sort=True)["heuristic"].agg(lambda h: ",".join(sorted(h)))
    out = per_neuron.rename("heuristics").reset_index()
    features = _heuristic_rows(feature_table)
    shared = neurons[["layer", "neuron", "heuristic"]].merge(
        features[features["site"] == "mlp"][["layer", "feature", "heuristic"]], on=["layer", "heuristic"])
    same = shared.groupby(["layer", "neuron"])["feature"].nunique().rename("n_features_same_heuristic")
    out = out.merge(same.reset_index(), on=["layer", "neuron"], how="left").fillna({"n_features_same_heuristic": 0})
    out["n_features_same_heuristic"] = out["n_features_same_heuristic"].astype(int)
    transcoders = {d.info.layer: d for d in dictionaries if d.info.site == "mlp"}
    out["n_features_cosine"] = np.nan
    d_mlp = int(bridge.cfg.d_mlp)
    for layer, d in transcoders.items():
        here = (out["layer"] == layer).to_numpy()
        if not here.any():
            continue
        ids = torch.tensor(out.loc[here, "neuron"].to_numpy(dtype=np.int64))
        w_out = probe_rows(bridge.blocks[layer].mlp.out, d_mlp, ids).double().cpu()  # [n, d_model]
        cos = torch.nn.functional.normalize(w_out, dim=1) @ torch.nn.functional.normalize(
            d.W_dec.detach().double().cpu(), dim=1).T  # [n, n_features]
        out.loc[here, "n_features_cosine"] = (cos >= cosine).sum(1).double().numpy()
    return out


@torch.no_grad()
def ablated_features_correct(bridge, tokens: Tensor, answer_tokens: Tensor, ablate: Tensor, features: pd.DataFrame,
                             dictionaries: Sequence[SparseDictionary], *, batch_size: int = 512) -> Tensor:
    """``[R]`` bool: whether the model still answers prompt r (``tokens`` ``[R, pos]``) with ``answer_tokens[r]``
    when the features ``features[ablate[r]]`` (``ablate`` ``[R, N]`` bool; ``features``: ``dictionary, feature``
    rows) are knocked out at every position: their decoder contribution a_f · W_dec[f], a_f encoded from the
    component's input in this run, is subtracted from the component's real output."""
    by_name = {d.info.name: d for d in dictionaries}
    unknown = sorted(set(features["dictionary"]) - set(by_name))
    if unknown:
        raise ValueError(f"features: no dictionary named {unknown}; pass the dictionaries the features come from")
    used = [(by_name[name], torch.from_numpy(np.flatnonzero(features["dictionary"].to_numpy() == name)))
            for name in sorted(set(features["dictionary"]))]
    device = input_device(bridge)
    out = []
    for start in range(0, len(tokens), batch_size):
        part = ablate[start : start + batch_size]
        found: dict[str, Tensor] = {}

        def encode(d, cols, tensor, hook):  # the input hook: a_f · [f ablated in this row] of the used features
            ids = torch.from_numpy(features["feature"].to_numpy()[cols.numpy()])
            on = part[:, cols].to(d.W_enc.device, d.W_enc.dtype)[:, None, :]
            found[d.info.name] = d.encode(_input(tensor, d))[..., ids] * on  # [b, pos, n_used]

        def subtract(d, cols, tensor, hook):  # the target hook (the same one for an SAE, after ``encode``)
            ids = torch.from_numpy(features["feature"].to_numpy()[cols.numpy()])
            removed = found.pop(d.info.name) @ d.W_dec[ids.to(d.W_dec.device)]  # [b, pos, d_out]
            return tensor - removed.view(tensor.shape).to(tensor.device, tensor.dtype)

        hooks = []
        for d, cols in used:
            read, write = hook_names(d.info)
            hooks += [(read, partial(encode, d, cols)), (write, partial(subtract, d, cols))]
        with bridge.hooks(fwd_hooks=hooks):
            logits = bridge(tokens[start : start + batch_size].to(device))
        out.append(logits[:, -1].argmax(-1).cpu() == answer_tokens[start : start + batch_size])
    return torch.cat(out)


def knockout_comparison(bridge, tokenizer, answers: pd.DataFrame, features: FeatureClassification,
                        neurons: Classified, dictionaries: Sequence[SparseDictionary], *, min_features: int,
                        min_neurons: int, max_prompts: int, seed: int, batch_size: int = 512) -> pd.DataFrame:
    """Per heuristic implemented by ≥ ``min_features`` classified features and ≥ ``min_neurons`` classified neurons:
    on at most ``max_prompts`` correctly answered prompts associated with it and as many others (drawn with
    ``seed``), the accuracy drop when its features are knocked out (:func:`ablated_features_correct`) and when its
    neurons are zero-ablated (:func:`~circuitflow.heuristics.knockout.ablated_correct`); ``specificity_*`` = drop
    on associated − drop on other prompts."""
    correct = features.correct & neurons.correct
    masks = {**features.found.masks, **neurons.found.masks}
    both = Classified(neurons.chosen, Classification(neurons.found.table, masks), neurons.activations, correct)
    tokens, answer_tokens, masks = _knockout_prompts(tokenizer, answers, both)
    feature_rows, neuron_rows = _heuristic_rows(features.found.table), _heuristic_rows(neurons.found.table)
    neuron_ids = torch.tensor(neurons.chosen[["layer", "neuron"]].to_numpy(dtype=np.int64))
    neuron_keys = list(zip(neurons.chosen["layer"], neurons.chosen["neuron"]))
    tracer = Tracer(bridge, Anatomy.from_bridge(bridge))
    rng, rows = np.random.default_rng(seed), []
    for name in sorted(set(feature_rows["heuristic"]) & set(neuron_rows["heuristic"])):
        f_cols = np.unique(feature_rows.loc[feature_rows["heuristic"] == name, "layer"].to_numpy())  # rows of chosen
        n_keys = set(zip(*(neuron_rows.loc[neuron_rows["heuristic"] == name, c] for c in ("layer", "neuron"))))
        assoc, other = np.flatnonzero(masks[name]), np.flatnonzero(~masks[name])
        n = min(max_prompts, len(assoc), len(other))
        if len(f_cols) < min_features or len(n_keys) < min_neurons or n == 0:
            continue
        chosen = torch.from_numpy(np.concatenate([rng.choice(assoc, n, replace=False),
                                                  rng.choice(other, n, replace=False)]))
        f_ablate = torch.zeros(2 * n, len(features.chosen), dtype=torch.bool)
        f_ablate[:, torch.from_numpy(f_cols)] = True
        n_ablate = torch.tensor([key in n_keys for key in neuron_keys])[None].expand(2 * n, -1)
        by_features = ablated_features_correct(bridge, tokens[chosen], answer_tokens[chosen], f_ablate,
                                               features.chosen, dictionaries, batch_size=batch_size)
        by_neurons = ablated_correct(tracer, tokens[chosen], answer_tokens[chosen], n_ablate, neuron_ids,
                                     batch_size=batch_size)
        drops = {unit: 1 - kept.double().view(2, n).mean(1) for unit, kept in
                 (("features", by_features), ("neurons", by_neurons))}
        rows.append(dict(heuristic=name, n_features=len(f_cols), n_neurons=len(n_keys), n_prompts=n,
                         **{f"{key}_{unit}": value for unit, d in drops.items() for key, value in
                            (("drop_associated", float(d[0])), ("drop_other", float(d[1])),
                             ("specificity", float(d[0] - d[1])))}))
    columns = ["heuristic", "n_features", "n_neurons", "n_prompts"] + [
        f"{key}_{unit}" for unit in ("features", "neurons") for key in ("drop_associated", "drop_other", "specificity")]
    return pd.DataFrame(rows, columns=columns)


CLASSIFICATION_COLUMNS = ["layer", "neuron", "heuristic", "family", "score", "coverage", "matched", "p_value",
                          "null_best", "beats_null", "kind"]
RESULT_SET = "result_set_{"


def classified_from_table(table: pd.DataFrame, answers: pd.DataFrame, spec: HeuristicSpec = HeuristicSpec()
                          ) -> Classified:
    """The neurons' :class:`~circuitflow.heuristics.analysis.Classified` rebuilt from their classification table
    (``Classified.table``, as the ``heuristics`` rule writes it) over the prompts of ``answers`` (the table they were
    classified on): each heuristic's prompts from ``spec`` (a ``result_set_{a,b,...}`` from its members),
    ``correct`` from ``answers``; the activations ``[P, N]`` are not in the table and are NaN."""
    op1, op2, result = (answers[c].to_numpy() for c in ("op1", "op2", "answer"))
    fixed = heuristic_set(op1, op2, result, spec)
    known = dict(zip(fixed.names, fixed.masks))
    masks = {}
    for name in pd.unique(table["heuristic"]):
        if name.startswith(RESULT_SET):
            known[name] = np.isin(result, [int(v) for v in name[len(RESULT_SET) : -1].split(",")])
        if name not in known:
            raise ValueError(f"neurons: heuristic {name!r} is not in the heuristics spec on these prompts; rerun the "
                             "heuristics rule with the current config")
        masks[name] = known[name]
    chosen = table.drop_duplicates(["layer", "neuron"])[["layer", "neuron", "importance", "rank"]]
    return Classified(chosen.reset_index(drop=True),
                      Classification(table[CLASSIFICATION_COLUMNS].reset_index(drop=True), masks),
                      torch.full((len(answers), len(chosen)), torch.nan), answers["correct"].to_numpy(dtype=bool))


@dataclass
class FeatureHeuristics:
    """The tables of :func:`analyse_features` for one model and operator."""

    table: pd.DataFrame  # per classified feature its matched and best heuristics (FeatureClassification.table)
    maps: pd.DataFrame  # activation over the operand grid of the most important features
    comparison: pd.DataFrame  # per feature site: compare_with_neurons
    splits: pd.DataFrame  # per heuristic neuron: neuron_splits
    knockout: pd.DataFrame  # per shared heuristic: knockout_comparison


def analyse_features(bridge, tokenizer, answers: pd.DataFrame, dictionaries: Sequence[SparseDictionary],
                     neuron_table: pd.DataFrame, *, top_n: int, spec: HeuristicSpec = HeuristicSpec(),
                     threshold: float = 0.6, two_sided: bool = False, null_permutations: int = 20, min_units: int = 3,
                     max_prompts: int = 200, map_features: int = 6, seed: int = 0,
                     batch_size: int = 512) -> FeatureHeuristics:
    """Heuristics as features for one operator: :func:`classify_features` (``top_n`` per dictionary), the
    activation maps of the ``map_features`` most important, and the comparison with the neurons of
    ``neuron_table`` (their classification table, :func:`classified_from_table`) — :func:`compare_with_neurons` per
    feature site (``site`` column; a site whose features all stay constant has a row with no features),
    :func:`neuron_splits` and :func:`knockout_comparison` (heuristics with ≥ ``min_units`` features and neurons)."""
    found = classify_features(bridge, tokenizer, answers, dictionaries, top_n, spec=spec, threshold=threshold,
                              two_sided=two_sided, null_permutations=null_permutations, seed=seed,
                              batch_size=batch_size)
    table = found.table
    neurons = classified_from_table(neuron_table, answers, spec)
    sites = pd.unique(pd.Series([d.info.site for d in dictionaries]))
    comparison = pd.concat([compare_with_neurons(table[table["site"] == site], neurons.table)
                            .drop(columns="operator").assign(site=site) for site in sites], ignore_index=True)
    knockout = knockout_comparison(bridge, tokenizer, answers, found, neurons, dictionaries, min_features=min_units,
                                   min_neurons=min_units, max_prompts=max_prompts, seed=seed, batch_size=batch_size)
    return FeatureHeuristics(table, found.maps(answers, map_features),
                             comparison[["site"] + list(comparison.columns[:-1])],
                             neuron_splits(table, neurons.table, bridge, dictionaries), knockout)
