"""Model registry, download, LoRA merge and loading into a TransformerLens 4 ``TransformerBridge``.

Every model the workflow analyses is described by a *handle* (``results/models/{model}/model.json``): a small JSON
record saying where its Hugging Face files are (a local directory, or a hub id and revision) and where it came from.
:func:`load_hf_model` and :func:`load_bridge` turn a handle into a model, the same way for every source.
"""

from circuitflow.models.handle import ModelHandle, read_handle, read_handles, write_handle
from circuitflow.models.load import load_bridge, load_hf_model, load_tokenizer, resolve_device, resolve_dtype
from circuitflow.models.registry import ModelSpec, expand_models
from circuitflow.models.tokens import max_single_token_number

__all__ = [
    "ModelHandle",
    "ModelSpec",
    "expand_models",
    "load_bridge",
    "load_hf_model",
    "load_tokenizer",
    "max_single_token_number",
    "read_handle",
    "read_handles",
    "resolve_device",
    "resolve_dtype",
    "write_handle",
]
