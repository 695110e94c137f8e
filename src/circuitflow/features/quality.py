"""How good a sparse dictionary is (docs/definitions.md#dictionary-quality).

On a data set of ``(input, target)`` activations (:func:`circuitflow.features.training.collect_activations`), with
``r`` the reconstruction of target ``t`` and sums over tokens and dimensions:

* normalized MSE ``Σ‖t − r‖² / Σ‖t − mean(t)‖²``: 0 for a perfect dictionary, 1 for one that outputs the mean;
* explained variance ``1 − Σ_d Var(t_d − r_d) / Σ_d Var(t_d)`` (variances pooled over dimensions; unlike the
  normalized MSE it forgives a constant offset of the reconstruction);
* L0: the mean number of active features per token; dead fraction: features never active on the data; dense
  fraction: features active on more than ``dense_threshold`` (default 10%) of the tokens.

*Splicing* (:func:`spliced`) replaces a dictionary's target activation inside the model's forward pass by its
reconstruction, computed from the same forward's input activation, so errors of earlier spliced dictionaries
propagate to later ones; :func:`splice_accuracy` measures the answer accuracy and loss of the spliced model at the
last position, and :func:`quality_table` tabulates everything per dictionary and operator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pandas as pd
import torch
from torch import Tensor

from circuitflow.features.dictionary import SparseDictionary, hook_names
from circuitflow.features.training import collect_activations

DENSE_THRESHOLD = 0.1
QUALITY_COLUMNS = ("nmse", "explained_variance", "l0", "dead_fraction", "dense_fraction")
TABLE_COLUMNS = ("dictionary", "site", "layer", "operator", *QUALITY_COLUMNS, "accuracy", "loss", "accuracy_original",
                 "loss_original")


@torch.no_grad()
def dictionary_quality(dictionary: SparseDictionary, inputs: Tensor, targets: Tensor,
                       dense_threshold: float = DENSE_THRESHOLD, batch_size: int = 4096) -> dict[str, float]:
    """``nmse, explained_variance, l0, dead_fraction, dense_fraction`` of ``dictionary`` on ``inputs`` ``[N, d_in]``
    and ``targets`` ``[N, d_out]`` (see the module docstring)."""
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"dictionary_quality needs as many inputs as targets (>0), got {len(inputs)} and "
                         f"{len(targets)}")
    weight = dictionary.W_enc
    targets = targets.to(torch.float64)
    residuals, counts = [], torch.zeros(dictionary.n_features, dtype=torch.float64)
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(weight.device, weight.dtype)
        f = dictionary.encode(x)
        residuals.append(targets[start : start + batch_size] - dictionary.decode(f, x).cpu().to(torch.float64))
        counts += (f != 0).sum(0).cpu().to(torch.float64)
    residual = torch.cat(residuals)
    variance = (targets - targets.mean(0)).pow(2).sum()
    frequency = counts / len(inputs)
    return dict(nmse=float(residual.pow(2).sum() / variance),
                explained_variance=float(1 - (residual - residual.mean(0)).pow(2).sum() / variance),
                l0=float(counts.sum() / len(inputs)),
                dead_fraction=float((frequency == 0).double().mean()),
                dense_fraction=float((frequency > dense_threshold).double().mean()))


def _reconstruct(dictionary: SparseDictionary, x: Tensor) -> Tensor:
    """``dictionary(x)`` for an activation ``x`` ``[..., d_in]`` of any dtype / device, returned in ``x``'s."""
    weight = dictionary.W_enc
    return dictionary(x.to(weight.device, weight.dtype)).to(x.device, x.dtype)


@contextmanager
def spliced(bridge, dictionaries: Mapping[str, SparseDictionary] | None) -> Iterator[None]:
    """Within the context, each dictionary's target activation in ``bridge``'s forward passes is replaced by its
    reconstruction from that forward's input activation (transcoders: ``mlp.hook_in`` -> ``hook_mlp_out``; attention
    SAEs: ``hook_z`` ``[b, p, n_heads, d_head]`` through its flattened reconstruction). ``None`` / empty: no change."""
    hooks = []
    for dictionary in (dictionaries or {}).values():
        input_hook, target_hook = hook_names(dictionary.info)
        if input_hook == target_hook:
            def replace(z: Tensor, hook, dictionary=dictionary) -> Tensor:
                return _reconstruct(dictionary, z.flatten(-2)).unflatten(-1, z.shape[-2:])

            hooks.append((target_hook, replace))
            continue
        stored: dict[str, Tensor] = {}

        def store(x: Tensor, hook, stored=stored) -> None:
            stored["x"] = x

        def transcode(out: Tensor, hook, dictionary=dictionary, stored=stored) -> Tensor:
            return _reconstruct(dictionary, stored.pop("x"))

        hooks += [(input_hook, store), (target_hook, transcode)]
    with bridge.hooks(fwd_hooks=hooks):
        yield


@torch.no_grad()
def splice_accuracy(bridge, tokens: Tensor, answer_ids: Tensor,
                    dictionaries: Mapping[str, SparseDictionary] | None, batch_size: int = 512) -> tuple[float, float]:
    """``(accuracy, loss)`` at the last position of ``tokens`` ``[n, pos]``: the fraction of prompts whose argmax is
    ``answer_ids`` ``[n]`` and the mean cross-entropy of the answer, with ``dictionaries`` spliced (``None``: the
    original model)."""
    correct, loss = 0, 0.0
    with spliced(bridge, dictionaries):
        for start in range(0, len(tokens), batch_size):
            logits = bridge(tokens[start : start + batch_size])[:, -1].double().cpu()
            answers = answer_ids[start : start + batch_size].cpu()
            correct += int((logits.argmax(-1) == answers).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, answers, reduction="sum"))
    return correct / len(tokens), loss / len(tokens)


def quality_table(bridge, tokens: Mapping[str, Tensor], answer_ids: Mapping[str, Tensor],
                  dictionaries: Mapping[str, SparseDictionary],
                  activations: Mapping[str, tuple[Tensor, Tensor]] | None = None, *,
                  dense_threshold: float = DENSE_THRESHOLD, batch_size: int = 512) -> pd.DataFrame:
    """One row per (dictionary, operator) of ``tokens`` / ``answer_ids`` (``[n, pos]`` / ``[n]`` per operator):
    the quality metrics on that operator's activations and the accuracy / loss with that dictionary alone spliced;
    rows ``dictionary="all"`` (every dictionary spliced) and ``"none"`` (the original model) per operator; and, when
    ``activations`` (e.g. the training set) are given, one row per dictionary with ``operator="all"`` holding the
    metrics on them. Columns: ``TABLE_COLUMNS``; metrics that do not apply are NaN."""
    nan = dict.fromkeys(QUALITY_COLUMNS, math.nan)
    infos = [d.info for d in dictionaries.values()]
    rows = []
    for op in tokens:
        original = splice_accuracy(bridge, tokens[op], answer_ids[op], None, batch_size)
        per_op = collect_activations(bridge, tokens[op], infos, batch_size)

        def row(name: str, site: str, layer: int, quality: dict, accuracy: tuple[float, float]) -> dict:
            return dict(dictionary=name, site=site, layer=layer, operator=op, **quality, accuracy=accuracy[0],
                        loss=accuracy[1], accuracy_original=original[0], loss_original=original[1])

        rows += [row(name, d.info.site, d.info.layer, dictionary_quality(d, *per_op[d.info.name], dense_threshold),
                     splice_accuracy(bridge, tokens[op], answer_ids[op], {name: d}, batch_size))
                 for name, d in dictionaries.items()]
        rows += [row("all", "", -1, nan, splice_accuracy(bridge, tokens[op], answer_ids[op], dictionaries, batch_size)),
                 row("none", "", -1, nan, original)]
    rows += [dict(dictionary=name, site=d.info.site, layer=d.info.layer, operator="all",
                  **dictionary_quality(d, *activations[d.info.name], dense_threshold))
             for name, d in dictionaries.items() if activations is not None]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
