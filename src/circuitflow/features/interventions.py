"""Interventions on dictionary features (docs/definitions.md#feature-interventions), from a config or a notebook.

A feature ``f`` of a dictionary (transcoder ``mlp{l}``, attention SAE ``attn{l}``) contributes ``a_f(x) · W_dec[f]``
to the dictionary's reconstruction of its component's output, where ``a_f(x)`` is the feature's activation on the
input ``x`` of the same forward. An intervention changes only that contribution and keeps everything else the
component really wrote (the other features *and* the dictionary's error)::

    out' = out + (a_new − a_f(x)) · W_dec[f]        at the chosen positions

with ``a_new = 0`` (ablate), ``a_new = value`` (set) or ``a_new = a_f(x) + value`` (steer: adds ``value · W_dec[f]``).
For a transcoder ``out`` is ``blocks.{l}.hook_mlp_out`` and ``x`` its MLP input ``blocks.{l}.mlp.hook_in``; for an
attention SAE both are ``blocks.{l}.attn.hook_z`` (``[b, pos, n_heads, d_head]``), so the decoder row is reshaped to
``[n_heads, d_head]`` and the change reaches the residual stream through ``W_O`` like any head output.

*Grab and delete* (LEAP) removes one feature's *direct* contribution from the residual stream entering a later block
``L`` (``blocks.{L}.hook_in``): ``resid' = resid − a_f · d_f`` at the feature's position, with ``d_f = W_dec[f]`` for a
transcoder and ``d_f = Σ_h W_dec[f, h] @ W_O[h]`` for an attention feature. Blocks between the feature's layer and
``L`` still see the feature; blocks from ``L`` on do not see it through the direct path.

:func:`intervention_effects` runs prompts with and without interventions and reports a metric per prompt and how the
chosen heads' attention patterns move.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.anatomy import probe_rows
from circuitflow.circuits.data import indexed_token_batches
from circuitflow.features.dictionary import SparseDictionary, hook_names
from circuitflow.features.formats import check_fits
from circuitflow.metrics import Metric, get_metric
from circuitflow.models.contract import input_device

Mode = Literal["ablate", "set", "steer"]
MODES = ("ablate", "set", "steer")
DICTIONARY_NAME = re.compile(r"(mlp|attn)\d+")
PATTERN_COLUMNS = ["layer", "head", "prompt", "query", "key", "before", "after"]


@dataclass(frozen=True)
class FeatureIntervention:
    """Change feature ``feature`` of dictionary ``dictionary`` (``"mlp1"``, ``"attn0"``) at ``positions`` (None: all;
    negative indices count from the end, -1 = last). ``mode``: ``"ablate"`` (activation 0), ``"set"`` (activation
    ``value``) or ``"steer"`` (adds ``value · W_dec[f]``)."""

    dictionary: str
    feature: int
    mode: Mode = "ablate"
    positions: tuple[int, ...] | None = None
    value: float = 0.0

    def __post_init__(self):
        if not isinstance(self.dictionary, str) or not DICTIONARY_NAME.fullmatch(self.dictionary):
            raise ValueError(f"intervention dictionary must be a name like 'mlp1' or 'attn0', not {self.dictionary!r}")
        if isinstance(self.feature, bool) or not isinstance(self.feature, (int, np.integer)) or self.feature < 0:
            raise ValueError(f"intervention feature must be a non-negative integer index, not {self.feature!r}")
        if self.mode not in MODES:
            raise ValueError(f"intervention mode must be one of {MODES}, not {self.mode!r}")
        if self.positions is not None:
            positions = [self.positions] if isinstance(self.positions, (int, np.integer)) else self.positions
            if (isinstance(positions, str) or not positions
                    or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in positions)):
                raise ValueError(f"intervention positions must be a non-empty list of integers (negative from the "
                                 f"end) or null for all positions, not {self.positions!r}")
            object.__setattr__(self, "positions", tuple(int(p) for p in positions))
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float, np.number)):
            raise ValueError(f"intervention value must be a number, not {self.value!r}")
        if self.mode == "ablate" and self.value != 0:
            raise ValueError(f"intervention mode 'ablate' takes no value (got {self.value!r}): use mode 'set'")
        object.__setattr__(self, "feature", int(self.feature))
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def from_dict(cls, spec: Mapping) -> FeatureIntervention:
        """An intervention from a config entry, e.g. ``{dictionary: mlp1, feature: 7, mode: set, value: 3.0,
        positions: [-1]}``; ``set`` and ``steer`` need a ``value``."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"an intervention must be a mapping with keys dictionary, feature, mode, positions, "
                             f"value, not {spec!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown intervention field(s) {unknown}: use {sorted(known)}")
        missing = [key for key in ("dictionary", "feature") if key not in spec]
        if spec.get("mode") in ("set", "steer") and "value" not in spec:
            missing.append("value")
        if missing:
            raise ValueError(f"intervention {dict(spec)} lacks field(s) {missing}")
        return cls(**spec)


def interventions_from_config(specs: Iterable[Mapping]) -> list[FeatureIntervention]:
    """:meth:`FeatureIntervention.from_dict` for each entry of a config list."""
    return [FeatureIntervention.from_dict(spec) for spec in specs]


def _by_name(dictionaries: Iterable[SparseDictionary] | Mapping[str, SparseDictionary]) -> dict[str, SparseDictionary]:
    values = list(dictionaries.values() if isinstance(dictionaries, Mapping) else dictionaries)
    named = {d.info.name: d for d in values}
    if len(named) != len(values):
        raise ValueError("dictionaries must have distinct names (one dictionary per site and layer)")
    return named


def _position_mask(positions: Tensor, valid: Tensor, every: Tensor, n_pos: int) -> Tensor:
    """``[n, n_pos]`` bool: which positions each of n interventions touches. ``positions`` ``[n, m]`` (padded, ``valid``
    marks real entries), ``every`` ``[n]``: the intervention has no position list (all positions)."""
    outside = valid & ((positions < -n_pos) | (positions >= n_pos))
    if outside.any():
        bad = positions[outside].tolist()
        raise ValueError(f"intervention positions {bad} lie outside prompts of {n_pos} tokens: "
                         f"use -{n_pos}..{n_pos - 1}")
    hits = torch.zeros(positions.shape[0], n_pos, dtype=torch.long, device=positions.device)
    hits.scatter_add_(1, positions % n_pos, valid.long())
    return (hits > 0) | every[:, None]


class _DictionaryEdit:
    """The interventions on one dictionary as tensors: ``features`` ``[n]``, ``keep`` ``[n]`` (1 for steer: the
    new activation keeps a_f), ``value`` ``[n]``, padded positions ``[n, m]``."""

    def __init__(self, dictionary: SparseDictionary, interventions: Sequence[FeatureIntervention]):
        self.dictionary = dictionary
        device = dictionary.W_dec.device
        features = [i.feature for i in interventions]
        if max(features) >= dictionary.n_features:
            raise ValueError(f"intervention feature {max(features)} does not exist in dictionary "
                             f"{dictionary.info.name} ({dictionary.n_features} features)")
        self.features = torch.tensor(features, device=device)
        self.keep = torch.tensor([float(i.mode == "steer") for i in interventions], device=device,
                                 dtype=dictionary.W_dec.dtype)
        self.value = torch.tensor([i.value for i in interventions], device=device, dtype=dictionary.W_dec.dtype)
        lists = [i.positions or () for i in interventions]
        width = max(1, *(len(p) for p in lists))
        self.positions = torch.tensor([list(p) + [0] * (width - len(p)) for p in lists], device=device)
        self.valid = torch.tensor([[j < len(p) for j in range(width)] for p in lists], device=device)
        self.every = torch.tensor([i.positions is None for i in interventions], device=device)
        self.input: Tensor | None = None

    def mask(self, n_pos: int) -> Tensor:
        """``[n, n_pos]`` bool; refuses two interventions on one feature at one position (their order is undefined)."""
        mask = _position_mask(self.positions, self.valid, self.every, n_pos)
        unique, inverse = self.features.unique(return_inverse=True)
        per_feature = torch.zeros(len(unique), n_pos, dtype=torch.long, device=mask.device)
        if per_feature.index_add_(0, inverse, mask.long()).max() > 1:
            raise ValueError(f"two interventions on one feature of {self.dictionary.info.name} share a position: "
                             "merge them into one")
        return mask

    def change(self, x: Tensor) -> Tensor:
        """``[b, pos, d_out]``: Σ_i (a_new,i − a_f,i(x)) · W_dec[f_i] at each intervention's positions, for the
        dictionary input ``x`` ``[b, pos, d_in]``."""
        d = self.dictionary
        x = x.to(d.W_enc.device, d.W_enc.dtype)
        active = d.encode(x)[..., self.features]  # [b, pos, n]
        delta = (self.keep - 1) * active + self.value  # a_new − a_f
        delta = delta * self.mask(x.shape[1]).T.to(delta.dtype)
        return delta @ d.W_dec[self.features]


def _record(edit: _DictionaryEdit, tensor: Tensor, hook) -> None:
    edit.input = tensor


def _apply_mlp(edit: _DictionaryEdit, tensor: Tensor, hook) -> Tensor:
    if edit.input is None:
        raise RuntimeError(f"transcoder {edit.dictionary.info.name}: its input hook did not fire before its output")
    x, edit.input = edit.input, None
    return tensor + edit.change(x).to(tensor.device, tensor.dtype)


def _apply_attn(edit: _DictionaryEdit, tensor: Tensor, hook) -> Tensor:  # [b, pos, n_heads, d_head]
    change = edit.change(tensor.flatten(-2)).unflatten(-1, tensor.shape[-2:])
    return tensor + change.to(tensor.device, tensor.dtype)


@contextmanager
def intervene(bridge, dictionaries: Iterable[SparseDictionary] | Mapping[str, SparseDictionary],
              interventions: Sequence[FeatureIntervention | Mapping]) -> Iterator:
    """Within this context every forward of ``bridge`` applies ``interventions`` (objects or config dicts): each
    changes only its feature's decoder contribution, ``out' = out + (a_new − a_f(x)) · W_dec[f]``. One pair of hooks
    per dictionary touched; all its interventions and positions are applied as one batched update."""
    interventions = [i if isinstance(i, FeatureIntervention) else FeatureIntervention.from_dict(i)
                     for i in interventions]
    named = _by_name(dictionaries)
    missing = sorted({i.dictionary for i in interventions} - set(named))
    if missing:
        raise ValueError(f"interventions name dictionaries {missing} that were not given: have {sorted(named)}")
    hooks: list[tuple[str, Callable]] = []
    for name in sorted({i.dictionary for i in interventions}):
        dictionary = named[name]
        edit = _DictionaryEdit(dictionary, [i for i in interventions if i.dictionary == name])
        source, target = hook_names(dictionary.info)
        if dictionary.info.site == "mlp":
            hooks += [(source, partial(_record, edit)), (target, partial(_apply_mlp, edit))]
        else:
            hooks.append((target, partial(_apply_attn, edit)))
    with bridge.hooks(fwd_hooks=hooks):
        yield bridge


def decoder_direction(bridge, dictionary: SparseDictionary, feature: int) -> Tensor:
    """``[d_model]``: what one unit of ``feature`` writes into the residual stream; ``W_dec[f]`` for a transcoder,
    ``Σ_h W_dec[f, h] @ W_O[h]`` (the head outputs' share, without the output bias) for an attention SAE."""
    row = dictionary.W_dec[feature].detach()
    if dictionary.info.site == "mlp":
        return row
    attn = bridge.blocks[dictionary.info.layer].attn
    w_o = probe_rows(attn.o, row.shape[0])  # [n_heads · d_head, d_model]
    return row.to(w_o.device, w_o.dtype) @ w_o


@contextmanager
def grab_and_delete(bridge, dictionary: SparseDictionary, feature: int, source_position: int,
                    layer: int) -> Iterator:
    """LEAP's grab and delete: within this context, the residual stream entering block ``layer`` (``ln_final`` for
    ``layer == n_layers``) loses ``a_f · d_f`` at ``source_position``, where ``a_f`` is the feature's activation at
    that position in the same forward and ``d_f`` its :func:`decoder_direction`. Nests with :func:`intervene`."""
    n_layers = len(bridge.blocks)
    if not dictionary.info.layer < layer <= n_layers:
        raise ValueError(f"grab_and_delete layer must be after the feature's layer {dictionary.info.layer} and at most "
                         f"{n_layers} (the final norm), not {layer}")
    if not 0 <= feature < dictionary.n_features:
        raise ValueError(f"grab_and_delete feature {feature} does not exist in dictionary {dictionary.info.name} "
                         f"({dictionary.n_features} features)")
    direction = decoder_direction(bridge, dictionary, feature)  # [d_model]
    grabbed: dict[str, Tensor] = {}

    def grab(tensor: Tensor, hook) -> None:  # the dictionary's input [b, pos, d_in] (hook_z: [b, pos, heads, d_head])
        n_pos = tensor.shape[1]
        if not -n_pos <= source_position < n_pos:
            raise ValueError(f"grab_and_delete source_position {source_position} lies outside prompts of {n_pos} "
                             "tokens")
        x = tensor[:, source_position].flatten(1).to(dictionary.W_enc.device, dictionary.W_enc.dtype)
        grabbed["a"] = dictionary.encode(x)[:, feature]  # [b]

    def delete(tensor: Tensor, hook) -> Tensor:  # residual [b, pos, d_model]
        out = tensor.clone()
        a = grabbed.pop("a").to(tensor.device, tensor.dtype)
        out[:, source_position] -= a[:, None] * direction.to(tensor.device, tensor.dtype)
        return out

    target = f"blocks.{layer}.hook_in" if layer < n_layers else "ln_final.hook_in"
    with bridge.hooks(fwd_hooks=[(hook_names(dictionary.info)[0], grab), (target, delete)]):
        yield bridge


def _patterns_run(bridge, tokens: Tensor, heads: Mapping[int, list[int]]) -> tuple[Tensor, dict[int, Tensor]]:
    """Logits ``[b, pos, vocab]`` of one forward and the patterns ``[b, heads, query, key]`` of the chosen heads."""
    kept: dict[int, Tensor] = {}

    def keep(layer: int, tensor: Tensor, hook) -> None:
        kept[layer] = tensor[:, heads[layer]].detach().double().cpu()

    with bridge.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", partial(keep, layer)) for layer in heads]):
        logits = bridge(tokens.to(input_device(bridge)))
    return logits, kept


def _pattern_frame(layer: int, heads: list[int], before: Tensor, after: Tensor) -> pd.DataFrame:
    """Rows ``layer, head, prompt, query, key, before, after`` (key <= query) of patterns ``[b, heads, q, k]``."""
    b, _, n_query, n_key = before.shape
    grid = np.meshgrid(np.arange(b), heads, np.arange(n_query), np.arange(n_key), indexing="ij")
    prompt, head, query, key = (a.flatten() for a in grid)
    causal = key <= query
    return pd.DataFrame(dict(layer=layer, head=head[causal], prompt=prompt[causal], query=query[causal],
                             key=key[causal], before=before.flatten().numpy()[causal],
                             after=after.flatten().numpy()[causal]))


@torch.no_grad()
def intervention_effects(bridge, tokens: Tensor, labels: Tensor,
                         dictionaries: Iterable[SparseDictionary] | Mapping[str, SparseDictionary],
                         interventions: Sequence[FeatureIntervention | Mapping],
                         heads: Sequence[tuple[int, int]] = (), metric: str | Metric = "logit_diff",
                         batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``tokens`` ``[b, pos]`` (one token length, every token real) without and with ``interventions``.

    Returns ``(summary, patterns)``. ``summary`` rows ``quantity, layer, head, prompt, before, after, change``: the
    metric per prompt (``quantity`` = the metric's name, layer = head = -1; ``labels`` ``[b, 2]`` hold the answer r
    and the counterfactual r', see circuitflow.metrics) and, per chosen head and prompt, ``quantity =
    "pattern_change"`` with ``change`` = the mean absolute change of the last query's attention over the keys (before
    and after NaN). ``summary.attrs["mean_change"]`` is the metric's mean change. ``patterns``: rows ``layer, head,
    prompt, query, key, before, after`` (key <= query) of the chosen heads' attention patterns.
    """
    metric_fn = get_metric(metric) if isinstance(metric, str) else metric
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    by_layer = {layer: sorted({h for l_, h in heads if l_ == layer}) for layer in sorted({l_ for l_, _ in heads})}
    lengths = torch.full((tokens.shape[0],), tokens.shape[1])
    scores: dict[str, list[Tensor]] = dict(before=[], after=[])
    patterns: dict[str, list[dict[int, Tensor]]] = dict(before=[], after=[])
    for start in range(0, tokens.shape[0], batch_size):
        part = slice(start, start + batch_size)
        clean, kept = _patterns_run(bridge, tokens[part], by_layer)
        with intervene(bridge, dictionaries, interventions):
            edited, kept_after = _patterns_run(bridge, tokens[part], by_layer)
        for key, logits, pats in (("before", clean, kept), ("after", edited, kept_after)):
            scores[key].append(metric_fn(logits, clean, lengths[part], labels[part]).double().cpu())
            patterns[key].append(pats)
    before, after = (torch.cat(scores[key]).numpy() for key in ("before", "after"))
    n = len(before)
    frames = [pd.DataFrame(dict(quantity=name, layer=-1, head=-1, prompt=np.arange(n), before=before, after=after,
                                change=after - before))]
    tidy = []
    for layer, layer_heads in by_layer.items():
        pat_before, pat_after = (torch.cat([p[layer] for p in patterns[key]]) for key in ("before", "after"))
        last_change = (pat_after[:, :, -1] - pat_before[:, :, -1]).abs().mean(-1)  # [b, heads]
        frames.append(pd.DataFrame(dict(quantity="pattern_change", layer=layer, head=np.tile(layer_heads, n),
                                        prompt=np.repeat(np.arange(n), len(layer_heads)), before=np.nan,
                                        after=np.nan, change=last_change.flatten().numpy())))
        tidy.append(_pattern_frame(layer, layer_heads, pat_before, pat_after))
    summary = pd.concat(frames, ignore_index=True)
    summary.attrs["mean_change"] = float((after - before).mean())
    return summary, pd.concat(tidy, ignore_index=True) if tidy else pd.DataFrame(columns=PATTERN_COLUMNS)


# ---------------------------------------------------------------------------------------------- configured runs
EFFECT_COLUMNS = ["operator", "intervention", "label", "quantity", "layer", "head", "prompt", "before", "after",
                  "change"]


def empty_intervention_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``(effects, patterns)`` tables of :func:`run_configured_interventions` without rows, columns typed."""
    ints, floats = ["intervention", "layer", "head", "prompt", "query", "key"], ["before", "after", "change"]
    columns = (EFFECT_COLUMNS, ["operator", *PATTERN_COLUMNS])
    return tuple(pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "float64" if c in floats else "object")
                               for c in names}) for names in columns)


def checked_interventions(specs: Sequence[Mapping], dictionaries: Mapping[str, SparseDictionary],
                          shortest_prompt: int) -> list[FeatureIntervention]:
    """The config's ``features.interventions`` as objects; an entry that is malformed, names a dictionary or a
    feature the model does not have, or a position outside prompts of ``shortest_prompt`` tokens raises a one-line
    ValueError naming ``features.interventions[i]``."""
    checked = []
    for i, spec in enumerate(specs):
        field = f"features.interventions[{i}]"
        try:
            intervention = FeatureIntervention.from_dict(spec)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{field}: {err}") from None
        dictionary = dictionaries.get(intervention.dictionary)
        if dictionary is None:
            raise ValueError(f"{field}.dictionary: {intervention.dictionary!r} is not one of this model's dictionaries "
                             f"{sorted(dictionaries)}: configure features.dictionaries or name another")
        if intervention.feature >= dictionary.n_features:
            raise ValueError(f"{field}.feature: {intervention.feature} does not exist in {intervention.dictionary} "
                             f"({dictionary.n_features} features): use 0..{dictionary.n_features - 1}")
        outside = [p for p in intervention.positions or () if not -shortest_prompt <= p < shortest_prompt]
        if outside:
            raise ValueError(f"{field}.positions: {outside} lie outside the shortest prompt ({shortest_prompt} "
                             f"tokens): use -{shortest_prompt}..{shortest_prompt - 1}")
        checked.append(intervention)
    return checked


def checked_heads(heads: Sequence[Sequence[int]], bridge) -> list[tuple[int, int]]:
    """``features.pattern_heads`` as ``(layer, head)`` pairs; one that the model lacks raises a one-line ValueError."""
    n_layers, n_heads = len(bridge.blocks), int(bridge.cfg.n_heads)
    for j, pair in enumerate(heads):
        if len(pair) != 2 or not (0 <= pair[0] < n_layers and 0 <= pair[1] < n_heads):
            raise ValueError(f"features.pattern_heads[{j}]: {list(pair)} is not a [layer, head] of this model "
                             f"({n_layers} layers, {n_heads} heads): use layer 0..{n_layers - 1}, head "
                             f"0..{n_heads - 1}")
    return [(int(layer), int(head)) for layer, head in heads]


@torch.no_grad()
def _grab_frame(bridge, tokens: Tensor, labels: Tensor, dictionary: SparseDictionary, index: int,
                intervention: FeatureIntervention, metric_fn: Metric, batch_size: int) -> pd.DataFrame:
    """Effect rows (``prompt`` = row of ``tokens`` ``[b, pos]``) of :func:`grab_and_delete` of the intervention's
    feature at its first position (the last when it has none) from the block after the dictionary's layer."""
    layer = dictionary.info.layer + 1
    position = intervention.positions[0] if intervention.positions else -1
    lengths = torch.full((tokens.shape[0],), tokens.shape[1])
    scores: dict[str, list[Tensor]] = dict(before=[], after=[])
    for start in range(0, tokens.shape[0], batch_size):
        part = slice(start, start + batch_size)
        batch = tokens[part].to(input_device(bridge))
        clean = bridge(batch)
        with grab_and_delete(bridge, dictionary, intervention.feature, position, layer):
            deleted = bridge(batch)
        for key, logits in (("before", clean), ("after", deleted)):
            scores[key].append(metric_fn(logits, clean, lengths[part], labels[part]).double().cpu())
    before, after = (torch.cat(scores[key]).numpy() for key in ("before", "after"))
    return pd.DataFrame(dict(intervention=index, label=f"{dictionary.info.name} #{intervention.feature} @ {position} "
                             f"→ block {layer}", quantity="grab_and_delete", layer=layer, head=-1,
                             prompt=np.arange(len(before)), before=before, after=after, change=after - before))


def _label(intervention: FeatureIntervention) -> str:
    where = "all" if intervention.positions is None else list(intervention.positions)
    value = "" if intervention.mode == "ablate" else f" {intervention.value:g}"
    return f"{intervention.dictionary} #{intervention.feature} {intervention.mode}{value} @ {where}"


def run_configured_interventions(bridge, dictionaries: Mapping[str, SparseDictionary],
                                 prompts_by_operator: Mapping[str, pd.DataFrame], interventions: Sequence[Mapping],
                                 heads: Sequence[Sequence[int]], metric: str, tokenizer,
                                 batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``feature_interventions`` stage: per operator, its prompt set (columns ``prompt, answer_token,
    corrupt_answer_token``) run without and with *all* configured ``interventions`` (config dicts) at once
    (:func:`intervention_effects`; intervention = -1, label lists them all), and for each intervention on a
    dictionary of layer l < n_layers − 1 the metric under :func:`grab_and_delete` of its feature at its first position
    (the last one when it has none) from block l + 1 (quantity "grab_and_delete", intervention = its config index,
    layer = l + 1). Prompts of different token lengths run as separate groups.

    Returns ``(effects, patterns)``: :data:`EFFECT_COLUMNS` rows and ``operator`` + :data:`PATTERN_COLUMNS` rows;
    ``prompt`` is the row of the operator's prompt set. No interventions: both tables empty.
    """
    metric_fn = get_metric(metric)
    if not interventions:
        return empty_intervention_tables()
    shortest = min((len(ids) for frame in prompts_by_operator.values()
                    for ids in tokenizer(list(frame["prompt"]))["input_ids"]), default=0)
    checked = checked_interventions(interventions, dictionaries, shortest)
    pairs = checked_heads(heads, bridge)
    n_layers = len(bridge.blocks)
    for name in sorted({x.dictionary for x in checked}):
        check_fits(dictionaries[name], bridge)
    grabs = [(i, x) for i, x in enumerate(checked) if dictionaries[x.dictionary].info.layer < n_layers - 1]
    joint = "; ".join(_label(x) for x in checked)
    effects, patterns = [], []
    for op, frame in prompts_by_operator.items():
        answers = frame[["answer_token", "corrupt_answer_token"]].to_numpy(dtype=np.int64)
        for rows, tokens in indexed_token_batches(tokenizer, list(frame["prompt"]), max(1, len(frame))):
            labels = torch.from_numpy(answers[rows.numpy()])
            summary, pattern = intervention_effects(bridge, tokens, labels, dictionaries, checked, pairs, metric,
                                                    batch_size)
            frames = [summary.assign(intervention=-1, label=joint)]
            frames += [_grab_frame(bridge, tokens, labels, dictionaries[x.dictionary], i, x, metric_fn, batch_size)
                       for i, x in grabs]
            for part in (*frames, pattern):
                part["prompt"] = rows.numpy()[part["prompt"].to_numpy(dtype=np.int64)]
                part.insert(0, "operator", op)
            effects += frames
            patterns.append(pattern)
    return (pd.concat(effects, ignore_index=True)[EFFECT_COLUMNS],
            pd.concat(patterns, ignore_index=True)[["operator", *PATTERN_COLUMNS]])
