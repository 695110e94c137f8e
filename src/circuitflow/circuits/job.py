"""The set-up the workflow's circuit jobs share: model, prompt pairs, and the means of the mean interventions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from torch import Tensor

from circuitflow.circuits.data import PairBatch, pair_batches, token_batches
from circuitflow.circuits.tracing import Tracer
from circuitflow.models import ModelHandle, load_bridge, load_tokenizer, read_handle


@dataclass
class CircuitJob:
    handle: ModelHandle
    bridge: object
    tracer: Tracer
    batches: list[PairBatch]
    means: Tensor | None


def load_circuit_job(handle_path: str, prompts_path: str, answers_paths: Sequence[str], circuits: dict,
                     device: str, dtype: str, device_map: str | None) -> CircuitJob:
    """Load the model and the prompt pairs; for ``mean``/``mean-positional`` interventions, average the upstream
    outputs over every legal prompt of every operator (the ``answers`` tables), as the arithmetic paper does."""
    handle = read_handle(handle_path)
    bridge = load_bridge(handle, device, dtype, device_map)
    tokenizer = load_tokenizer(handle)  # the model's own (the bridge's adds a BOS token the prompts never had)
    batches = pair_batches(pd.read_parquet(prompts_path), tokenizer, circuits["batch_size"])
    tracer = Tracer(bridge)
    means = None
    if circuits["intervention"].startswith("mean"):
        texts = pd.concat([pd.read_parquet(path) for path in answers_paths])["prompt"].tolist()
        positional = circuits["intervention"] == "mean-positional"
        length = batches[0].clean.shape[1] if positional else None
        means = tracer.means(token_batches(tokenizer, texts, circuits["batch_size"], length), positional)
    return CircuitJob(handle, bridge, tracer, batches, means)
