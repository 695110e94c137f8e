"""The set-up the workflow's model-running jobs share: handle, bridge, the model's own tokenizer and a tracer; for
circuit jobs also the prompt pairs and the means of the mean interventions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from torch import Tensor

from circuitflow.circuits.data import PairBatch, pair_batches, token_batches
from circuitflow.circuits.tracing import Tracer
from circuitflow.models import ModelHandle, load_bridge, load_tokenizer, read_handle
from circuitflow.tables import PROMPT_SET_COLUMNS, read_table


@dataclass
class ModelJob:
    handle: ModelHandle
    bridge: object
    tokenizer: object  # the model's own: the bridge's tokenizer prepends a BOS token the prompt sets never had
    tracer: Tracer


@dataclass
class CircuitJob(ModelJob):
    batches: list[PairBatch]
    means: Tensor | None  # [pos or 1, n_up, d_model] upstream outputs, for the mean interventions
    hidden_means: Tensor | None  # [pos or 1, n_layers, d_mlp] MLP hidden activations, likewise (mlp-neuron level)


def load_model_job(handle_path: str, device: str, dtype: str, device_map: str | None) -> ModelJob:
    """Load the model of a handle file into a bridge, with its own tokenizer and a :class:`Tracer`."""
    handle = read_handle(handle_path)
    bridge = load_bridge(handle, device, dtype, device_map)
    return ModelJob(handle, bridge, load_tokenizer(handle), Tracer(bridge))


def load_circuit_job(handle_path: str, prompts_path: str, answers_paths: Sequence[str], circuits: dict, *,
                     device: str, dtype: str, device_map: str | None) -> CircuitJob:
    """Load the model and the prompt pairs; for ``mean``/``mean-positional`` interventions, average the upstream
    outputs and the MLP hidden activations over every legal prompt of every operator (the ``answers`` tables), as
    the arithmetic paper does."""
    job = load_model_job(handle_path, device, dtype, device_map)
    batches = pair_batches(read_table(prompts_path, PROMPT_SET_COLUMNS), job.tokenizer, circuits["batch_size"])
    means = hidden_means = None
    if circuits["intervention"].startswith("mean"):
        texts = pd.concat([read_table(path, ["prompt"]) for path in answers_paths])["prompt"].tolist()
        positional = circuits["intervention"] == "mean-positional"
        length = batches[0].clean.shape[1] if positional else None
        tokens = token_batches(job.tokenizer, texts, circuits["batch_size"], length)
        means = job.tracer.means(tokens, positional)
        hidden_means = job.tracer.hidden_means(tokens, positional)
    return CircuitJob(job.handle, job.bridge, job.tokenizer, job.tracer, batches, means, hidden_means)
