"""Per-model facts derived from the tokenizer instead of hard-coded."""

from __future__ import annotations


def max_single_token_number(tokenizer, limit: int = 10_000) -> int:
    """Largest ``n`` such that every integer ``0..n`` is encoded as exactly one token (``-1`` if ``0`` is not).

    Special tokens the tokenizer adds (a BOS) are not counted, and the unknown token is not a number's token.
    ``limit`` bounds the search.
    """
    batch = 1000
    for start in range(0, limit + 1, batch):
        words = [str(n) for n in range(start, min(limit + 1, start + batch))]
        encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
        for offset, ids in enumerate(encoded):
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                return start + offset - 1
    return limit
