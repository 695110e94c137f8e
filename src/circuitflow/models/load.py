"""Loading a model handle into Hugging Face and into a TransformerLens 4 ``TransformerBridge``.

The bridge is booted around the already-loaded HF model (``boot_transformers(..., hf_model=...)``), so every source
(toy checkpoint, hub snapshot, local directory, merged LoRA) goes through one path. Without
``enable_compatibility_mode()`` the bridge's logits equal the HF model's exactly (eager attention on both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from circuitflow.models.contract import compute_device
from circuitflow.models.handle import ModelHandle

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16", "float64")
DeviceName = Literal["auto", "cpu", "cuda", "mps"] | str


def resolve_device(device: DeviceName = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name is returned unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a config dtype name (``float32``, ``bfloat16``, ``float16``) to a torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _revision(handle: ModelHandle) -> dict:
    return {"revision": handle.revision} if handle.source == "hub" and handle.revision else {}


def load_tokenizer(handle: ModelHandle):
    """The model's tokenizer (a fast HF tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(handle.path, **_revision(handle))


def load_hf_model(
    handle: ModelHandle,
    device: DeviceName = "auto",
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    *,
    max_memory: dict | None = None,
):
    """Load the HF causal LM in eval mode with eager attention; ``device_map`` (e.g. ``"auto"``, or a dict of module
    name -> device) spreads a model larger than one GPU over several, with ``max_memory`` (e.g.
    ``{0: "10GiB", "cpu": "100GiB"}``) bounding each device; then ``device`` is ignored."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=resolve_dtype(dtype), attn_implementation="eager", **_revision(handle))
    if device_map is not None:
        kwargs.update(device_map=device_map, **({"max_memory": max_memory} if max_memory else {}))
    model = AutoModelForCausalLM.from_pretrained(handle.path, **kwargs)
    if device_map is None:
        model = model.to(resolve_device(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_bridge(
    handle: ModelHandle,
    device: DeviceName = "auto",
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    hf_model=None,
    *,
    max_memory: dict | None = None,
    allow_cpu_gpu_split: bool = False,
):
    """A ``TransformerBridge`` around the handle's model (loaded with :func:`load_hf_model` unless given; a given
    model keeps its own placement). The circuit engine checks the bridge when it builds a ``Tracer``
    (:mod:`circuitflow.models.contract`).

    With ``device_map`` the HF model is placed by accelerate and the bridge wraps it as placed. TransformerLens 4.3
    refuses a placement that mixes CPU and GPU devices as not yet verified; ``allow_cpu_gpu_split=True`` lets it
    through (``benchmarks/gpu_check`` compares such a split with the single-device run)."""
    from transformer_lens.model_bridge import TransformerBridge

    if hf_model is None:
        hf_model = load_hf_model(handle, device, dtype, device_map, max_memory=max_memory)
    placement = getattr(hf_model, "hf_device_map", None)
    devices = {str(d) for d in (placement or {}).values()}
    split = bool(devices & {"cpu", "disk"}) and any(d not in ("cpu", "disk") for d in devices)
    if split and not allow_cpu_gpu_split:
        raise ValueError(f"device_map placed {handle.name} on both CPU and GPU ({sorted(devices)}): "
                         "give the GPUs more max_memory, or pass allow_cpu_gpu_split=True to load_bridge")
    # TransformerLens reads the placement only to refuse a CPU/GPU mix and to check that each module's weights are
    # where the map says, which offloaded (``meta``) and tied weights fail; the engine runs such models exactly
    # (tests/unit/test_offload.py)
    hide = split or "disk" in devices
    if hide:
        del hf_model.hf_device_map
    try:
        return TransformerBridge.boot_transformers(
            handle.path, hf_model=hf_model, tokenizer=load_tokenizer(handle), dtype=resolve_dtype(dtype),
            device=str(compute_device(hf_model.get_input_embeddings())), **_revision(handle))
    finally:
        if hide:
            hf_model.hf_device_map = placement
