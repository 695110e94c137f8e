"""IE maps: the effect of patching each attention head and each whole MLP at each prompt position (paper §3).

For every prompt of the set and every seed, the counterfactual is a correct prompt of *any* operator with another
answer and the same token length (``seed`` picks it); the value reported is the mean over prompts of the paper's IE
(eq. 1) and of the change in logit difference ``logit[r] − logit[r']`` caused by the patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuitflow.circuits.data import pair_batches
from circuitflow.circuits.tracing import Tracer
from circuitflow.localization.patching import POSITION_NAMES, component_sites, patch_sites
from circuitflow.metrics import ie, logit_diff, tile_rows
from circuitflow.prompts import add_counterfactuals

COUNTERFACTUAL_COLUMNS = ("corrupt_prompt", "corrupt_op1", "corrupt_op2", "corrupt_answer", "corrupt_answer_token")


def counterfactual_pool(answer_paths: Sequence[str]) -> pd.DataFrame:
    """The correct prompts of every operator (from the ``answers`` tables): where IE maps draw counterfactuals."""
    answers = pd.concat([pd.read_parquet(path) for path in answer_paths], ignore_index=True)
    return answers[answers["correct"]]


def resample_counterfactuals(prompts: pd.DataFrame, pool: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``prompts`` with new counterfactual partners drawn (seeded) from ``pool`` (correct prompts of any operator,
    same token length, another answer). Prompts without a possible partner are dropped."""
    base = prompts.drop(columns=[c for c in COUNTERFACTUAL_COLUMNS if c in prompts])
    return add_counterfactuals(base, pool, len(base), np.random.default_rng(seed))


def _logit_diff_change(logits, clean_logits, lengths, labels):
    clean = tile_rows(logit_diff(clean_logits, clean_logits, lengths, labels), logits.shape[0])
    return logit_diff(logits, clean_logits, lengths, labels) - clean


def ie_map(tracer: Tracer, tokenizer, prompts: pd.DataFrame, pool: pd.DataFrame, seeds: Sequence[int], *,
           batch_size: int = 64, max_rows: int = 4096, progress: bool = True) -> pd.DataFrame:
    """The IE map table: one row per ``seed, layer, component (head|mlp), head (-1 for MLPs), position`` with the
    mean over prompts of ``ie`` and ``logit_diff_change``, their medians (``ie_median``, ``logit_diff_change_median``)
    and ``n_prompts``. Positions are the last four tokens (op1, operator, op2, last). IE divides by P*(r), so on a
    confident model a patch that flips the answer gives IE ~ 1/P*(r), astronomically large: its mean is dominated by
    such prompts, and the median ranks components robustly."""
    a = tracer.anatomy
    rows = []
    for seed in tqdm(seeds, desc="IE map seeds", disable=not progress):
        pairs = resample_counterfactuals(prompts, pool, seed)
        per_prompt: dict[str, list[torch.Tensor]] = {}
        for batch in pair_batches(pairs, tokenizer, batch_size):
            length = batch.clean.shape[1]
            sites = component_sites(a.n_layers, a.n_heads, list(range(length - 4, length)))
            values = patch_sites(tracer, batch, sites["layer"], sites["unit"], sites["pos"], sites["kind"],
                                 {"ie": ie, "logit_diff_change": _logit_diff_change}, max_rows=max_rows)
            for name, v in values.items():
                per_prompt.setdefault(name, []).append(v.double())
        stats = {}
        for name, parts in per_prompt.items():
            v = torch.cat(parts, dim=1)  # [sites, prompts]
            stats[name], stats[f"{name}_median"] = v.mean(1), v.median(1).values
        n = len(pairs)
        for s in range(len(sites["layer"])):
            kind = int(sites["kind"][s])
            rows.append(dict(seed=seed, layer=int(sites["layer"][s]), component="mlp" if kind else "head",
                             head=-1 if kind else int(sites["unit"][s]),
                             position=POSITION_NAMES[s % 4], n_prompts=n,
                             **{name: float(values[s]) for name, values in stats.items()}))
    return pd.DataFrame(rows)


def top_heads(table: pd.DataFrame, n: int, position: str | None = None,
              value: str = "ie_median") -> list[tuple[int, int]]:
    """The ``n`` heads with the largest ``value`` (mean over seeds; max over positions unless ``position`` is given)."""
    heads = table[table["component"] == "head"]
    if position is not None:
        heads = heads[heads["position"] == position]
    score = heads.groupby(["layer", "head", "position"])[value].mean().groupby(["layer", "head"]).max()
    return [tuple(map(int, idx)) for idx in score.sort_values(ascending=False).index[:n]]
