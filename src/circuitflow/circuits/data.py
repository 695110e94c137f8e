"""Clean/counterfactual prompt pairs as token batches for the circuit engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor


class PairError(ValueError):
    """A prompt set that the circuit engine cannot use (one line naming the problem and the fix)."""


@dataclass
class PairBatch:
    """Equal-length clean and corrupt prompts: ``clean``/``corrupt`` ``[batch, pos]``, ``labels`` ``[batch, 2]``
    (clean answer token r, corrupt answer token r'), ``lengths`` ``[batch]``."""

    clean: Tensor
    corrupt: Tensor
    labels: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device: str | torch.device) -> PairBatch:
        return PairBatch(*(t.to(device) for t in (self.clean, self.corrupt, self.labels, self.lengths)))


def pair_batches(prompts: pd.DataFrame, tokenizer, batch_size: int) -> list[PairBatch]:
    """Tokenize a prompt set (columns ``prompt, corrupt_prompt, answer_token, corrupt_answer_token``) into batches
    of at most ``batch_size`` pairs that share a token length (rows keep their order within a length)."""
    if len(prompts) == 0:
        raise PairError("the prompt set is empty: nothing to attribute; check prompts.k and the prompts table")
    clean = tokenizer(list(prompts["prompt"]))["input_ids"]
    corrupt = tokenizer(list(prompts["corrupt_prompt"]))["input_ids"]
    bad = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if len(a) != len(b)]
    if bad:
        i = bad[0]
        raise PairError(f"prompt {prompts['prompt'].iloc[i]!r} and its counterfactual "
                        f"{prompts['corrupt_prompt'].iloc[i]!r} have different token lengths; patching needs "
                        "equal lengths (rebuild the prompt set)")
    if "prompt_len" in prompts and [len(t) for t in clean] != prompts["prompt_len"].tolist():
        raise PairError("the tokenizer splits the prompts differently from the prompts stage (a BOS token added?): "
                        "pass the model's own tokenizer (circuitflow.models.load_tokenizer), not bridge.tokenizer")
    labels = prompts[["answer_token", "corrupt_answer_token"]].to_numpy(dtype=np.int64)
    lengths = np.array([len(t) for t in clean])
    batches = []
    for length in sorted(set(lengths)):
        rows = np.flatnonzero(lengths == length)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batches.append(PairBatch(torch.tensor([clean[i] for i in chunk]), torch.tensor([corrupt[i] for i in chunk]),
                                     torch.from_numpy(labels[chunk]), torch.full((len(chunk),), int(length))))
    return batches


def split_batches(batches: list[PairBatch], batch_size: int) -> list[PairBatch]:
    """The same pairs re-cut into batches of at most ``batch_size``."""
    out = []
    for batch in batches:
        for start in range(0, len(batch), batch_size):
            part = slice(start, start + batch_size)
            out.append(PairBatch(batch.clean[part], batch.corrupt[part], batch.labels[part], batch.lengths[part]))
    return out


def indexed_token_batches(tokenizer, texts: list[str], batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """``(rows, tokens)`` batches of ``texts`` grouped by token length: ``rows`` ``[b]`` are the texts' indices
    (ascending within a length), ``tokens`` ``[b, pos]``; every text is in exactly one batch."""
    ids = tokenizer(list(texts))["input_ids"]
    by_length: dict[int, list[int]] = {}
    for index, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(index)
    return [(torch.tensor(rows[i : i + batch_size]), torch.tensor([ids[j] for j in rows[i : i + batch_size]]))
            for _, rows in sorted(by_length.items()) for i in range(0, len(rows), batch_size)]


def token_batches(tokenizer, texts: list[str], batch_size: int, length: int | None = None) -> list[Tensor]:
    """Token batches of ``texts`` grouped by token length (only those of ``length`` tokens when given): the
    intervention dataset of the mean interventions."""
    batches = [tokens for _, tokens in indexed_token_batches(tokenizer, texts, batch_size)
               if length is None or tokens.shape[1] == length]
    if not batches:
        raise PairError(f"no intervention prompt has {length} tokens: the mean-positional means need prompts of the "
                        "prompt set's length")
    return batches
