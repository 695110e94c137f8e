"""Published sparse dictionaries as :class:`~circuitflow.features.dictionary.SparseDictionary` objects.

Every format's encoder is rewritten into our ``pre = x @ W_enc + b_enc`` (``W_enc`` ``[d_in, n_features]``) and
its decoder into ``out = f @ W_dec + b_dec + x @ W_skip`` (``W_dec`` ``[n_features, d_out]``, ``W_skip``
``[d_in, d_out]``), so encode / decode give exactly the library's own feature activations and reconstruction:

* ``saelens``: a directory with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc`` ``[d_in, d_sae]``, ``b_enc``,
  ``W_dec`` ``[d_sae, d_out]``, ``b_dec``, ``threshold`` for JumpReLU, ``W_skip`` ``[d_out, d_in]`` for skip
  transcoders). Architectures ``standard`` / ``transcoder`` / ``skip_transcoder`` (ReLU), ``jumprelu`` /
  ``jumprelu_transcoder`` (``relu(pre)·[pre > θ]`` = ours with ``θ`` clamped at 0), ``topk`` (``k`` in the config).
  SAEs with ``apply_b_dec_to_input`` encode ``x − b_dec``, folded into the bias: ``b_enc' = b_enc − b_dec @ W_enc``.
* ``circuit-tracer``: a transcoder set, ``layer_{l}.safetensors`` per layer (or one such file): ``W_enc``
  ``[d_transcoder, d_model]`` used as ``x @ W_enc^T``, ``b_enc``, ``W_dec`` ``[d_transcoder, d_model]``, ``b_dec``,
  optional ``W_skip`` ``[d_model, d_model]`` used as ``x @ W_skip^T``; JumpReLU when
  ``activation_function.threshold`` (or ``threshold``) is present, else ReLU.
* ``sparsify`` (EleutherAI): ``cfg.json`` and ``sae.safetensors`` with ``encoder.weight`` ``[num_latents, d_in]``,
  ``encoder.bias``, ``W_dec`` ``[num_latents, d_out]``, ``b_dec``, optional ``W_skip`` used as ``x @ W_skip^T``;
  TopK of ``relu(pre)`` with ``k`` from the config; SAEs (``transcode: false``) encode ``x − b_dec`` (folded as for
  SAELens).
* ``native``: :meth:`SparseDictionary.save`'s ``dictionary.json`` + ``dictionary.safetensors``.

A path that does not exist locally is read as a Hugging Face Hub repository ``owner/name`` optionally followed by a
folder inside it (``owner/name/layers.3.mlp``) and downloaded with ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from circuitflow.features.dictionary import CONFIG_FILE, DictionaryInfo, SparseDictionary

FORMATS = ("auto", "native", "saelens", "circuit-tracer", "sparsify")
SAELENS_ACTIVATIONS = {"standard": "relu", "transcoder": "relu", "skip_transcoder": "relu", "jumprelu": "jumprelu",
                       "jumprelu_transcoder": "jumprelu", "topk": "topk"}
SAELENS_TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder")


def _tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"dictionary file {path} is missing")
    return load_file(path)


def _config(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"dictionary config {path} is missing")
    return json.loads(path.read_text())


def _build(info: DictionaryInfo, source: str, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
           threshold: Tensor | None = None, W_skip: Tensor | None = None) -> SparseDictionary:
    """A dictionary from weights already in our layout (see the module docstring), after checking their shapes."""
    d_in, n = W_enc.shape
    d_out = W_dec.shape[1]
    expected = dict(b_enc=(n,), W_dec=(n, d_out), b_dec=(d_out,), threshold=(n,), W_skip=(d_in, d_out))
    given = dict(b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, W_skip=W_skip)
    for name, tensor in given.items():
        if tensor is not None and tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, expected {expected[name]} for an "
                             f"encoder of shape [d_in={d_in}, n_features={n}]")
    if info.activation == "jumprelu" and threshold is None:
        raise ValueError(f"{source}: a jumprelu dictionary needs a threshold tensor")
    dictionary = SparseDictionary(info, d_in, d_out, n, skip=W_skip is not None, dtype=W_enc.dtype)
    state = {name: tensor for name, tensor in dict(given, W_enc=W_enc).items() if tensor is not None}
    if info.activation != "jumprelu":
        state.pop("threshold", None)
    dictionary.load_state_dict({name: tensor.to(W_enc.dtype).contiguous() for name, tensor in state.items()})
    return dictionary.requires_grad_(False)


def _load_saelens(directory: Path, site: str, layer: int) -> SparseDictionary:
    cfg = _config(directory / "cfg.json")
    architecture = cfg.get("architecture", "standard")
    if architecture not in SAELENS_ACTIVATIONS:
        raise ValueError(f"SAELens architecture {architecture!r} in {directory} is not supported: use one of "
                         f"{sorted(SAELENS_ACTIVATIONS)}")
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(f"SAELens dictionary {directory} has normalize_activations="
                         f"{cfg['normalize_activations']!r}: fold the normalization into the weights first")
    w = _tensors(directory / "sae_weights.safetensors")
    k = int(cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k", 0)) if architecture == "topk" else 0
    info = DictionaryInfo(site, layer, SAELENS_ACTIVATIONS[architecture], k)
    b_enc = w["b_enc"]
    if architecture not in SAELENS_TRANSCODERS and cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc - w["b_dec"] @ w["W_enc"]
    threshold = w["threshold"].clamp_min(0) if "threshold" in w else None
    W_skip = w["W_skip"].T if "W_skip" in w else None
    return _build(info, str(directory), w["W_enc"], b_enc, w["W_dec"], w["b_dec"], threshold, W_skip)


def _load_circuit_tracer(directory: Path, site: str, layer: int) -> SparseDictionary:
    path = directory if directory.suffix == ".safetensors" else directory / f"layer_{layer}.safetensors"
    w = _tensors(path)
    threshold = w.get("activation_function.threshold", w.get("threshold"))
    info = DictionaryInfo(site, layer, "relu" if threshold is None else "jumprelu")
    W_skip = w["W_skip"].T if "W_skip" in w else None
    return _build(info, str(path), w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], threshold, W_skip)


def _load_sparsify(directory: Path, site: str, layer: int) -> SparseDictionary:
    cfg = _config(directory / "cfg.json")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"sparsify activation {cfg['activation']!r} in {directory} is not supported: only topk")
    w = _tensors(directory / "sae.safetensors")
    W_enc = w["encoder.weight"].T
    b_enc = w["encoder.bias"] if cfg.get("transcode", False) else w["encoder.bias"] - w["b_dec"] @ W_enc
    W_skip = w["W_skip"].T if "W_skip" in w else None
    info = DictionaryInfo(site, layer, "topk", int(cfg.get("k", 32)))
    return _build(info, str(directory), W_enc, b_enc, w["W_dec"], w["b_dec"], None, W_skip)


def _load_native(directory: Path, site: str, layer: int) -> SparseDictionary:
    dictionary = SparseDictionary.load(directory)
    if (dictionary.info.site, dictionary.info.layer) != (site, layer):
        raise ValueError(f"dictionary {directory} is {dictionary.info.name}, not {site}{layer}: pass its site and "
                         "layer")
    return dictionary.requires_grad_(False)


LOADERS = {"native": _load_native, "saelens": _load_saelens, "circuit-tracer": _load_circuit_tracer,
           "sparsify": _load_sparsify}


def detect_format(path: Path | str, layer: int) -> str:
    """The format of a local dictionary ``path`` (see the module docstring), from the files it holds."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return "native"
    if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
        return "saelens"
    if (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file():
        return "sparsify"
    if path.suffix == ".safetensors" and path.is_file() or (path / f"layer_{layer}.safetensors").is_file():
        return "circuit-tracer"
    raise ValueError(f"no dictionary format recognised in {path}: expected {CONFIG_FILE} (native), cfg.json + "
                     f"sae_weights.safetensors (saelens), cfg.json + sae.safetensors (sparsify) or "
                     f"layer_{layer}.safetensors (circuit-tracer)")


def _hub_snapshot(spec: str, format: str, layer: int, revision: str | None) -> Path:
    """Download ``owner/name[/folder]`` from the Hugging Face Hub (only the folder; for circuit-tracer sets only the
    layer's file) and return the local folder."""
    from huggingface_hub import snapshot_download

    parts = spec.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"dictionary path {spec!r} is neither a local path nor a Hub repository owner/name[/folder]")
    repo, folder = "/".join(parts[:2]), "/".join(parts[2:])
    prefix = f"{folder}/" if folder else ""
    patterns = [f"{prefix}layer_{layer}.safetensors", f"{prefix}*.json", f"{prefix}*.yaml"] \
        if format == "circuit-tracer" else [f"{prefix}*"]
    return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns)) / folder


def load_dictionary(path_or_repo: Path | str, *, format: str = "auto", site: str, layer: int,
                    revision: str | None = None, device: str | torch.device = "cpu") -> SparseDictionary:
    """The published dictionary at ``path_or_repo`` (a local folder / file, or a Hub ``owner/name[/folder]`` at
    ``revision``) as the ``site`` dictionary of ``layer``; ``format`` one of ``FORMATS`` (``auto``: from the files)."""
    if format not in FORMATS:
        raise ValueError(f"dictionary format must be one of {FORMATS}, not {format!r}")
    local = Path(path_or_repo)
    if not local.exists() and (local.is_absolute() or str(path_or_repo).startswith(".")):
        raise ValueError(f"dictionary path {local} does not exist")
    if not local.exists():
        local = _hub_snapshot(str(path_or_repo), format, layer, revision)
    chosen = detect_format(local, layer) if format == "auto" else format
    return LOADERS[chosen](local, site, layer).to(device)


def check_fits(dictionary: SparseDictionary, bridge) -> None:
    """Raise a ValueError unless ``dictionary``'s width and layer fit ``bridge``: ``d_in = d_out = d_model`` for a
    transcoder, ``n_heads · d_head`` for an attention SAE."""
    cfg = bridge.cfg
    width = int(cfg.d_model) if dictionary.info.site == "mlp" else int(cfg.n_heads) * int(cfg.d_head)
    if (dictionary.d_in, dictionary.d_out) != (width, width):
        raise ValueError(f"dictionary {dictionary.info.name} maps {dictionary.d_in} -> {dictionary.d_out} dims but "
                         f"the model's {dictionary.info.site} site has {width}: load a dictionary made for this model")
    if not 0 <= dictionary.info.layer < int(cfg.n_layers):
        raise ValueError(f"dictionary {dictionary.info.name}: layer {dictionary.info.layer} is outside the model's "
                         f"0..{int(cfg.n_layers) - 1}")
