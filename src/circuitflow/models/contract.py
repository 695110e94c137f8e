"""The bridge contract: what the circuit engine relies on in a ``TransformerBridge``, checked when it is loaded.

* the bridge is a ``TransformerBridge`` without compatibility mode (which folds and centres the weights, so hooks
  no longer see the HF model's activations);
* every block has the submodules the engine reads weights and norms from (:data:`BLOCK_SUBMODULES`), and every
  hook the engine reads or writes fires in a forward pass;
* ``prefix_cache``: a last-token forward on the prefix's key/value cache gives the full forward's logits. Some
  transformers releases hand the cache to attention under a name the bridge's attention does not read, and the
  cache is then silently ignored (transformers 5.24: Llama and GPT-2), so the engine reuses a prefix only where
  this check passed on the bridge at hand, and otherwise runs whole prompts;
* ``logits_to_keep``: Hugging Face's ``logits_to_keep=1`` returns the last position's logits unchanged.

Failures are one-line :class:`BridgeContractError` messages naming what is wrong.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

BLOCK_SUBMODULES = ("ln1", "attn", "attn.q", "attn.k", "attn.v", "attn.o", "mlp")
# |cached − full| must stay below this share of the prefix's own effect |full − last token alone|: an ignored cache
# gives a share near 1, a working one rounding noise (1e-16 … 1e-6 in float32/64, ~1e-2 in half precision)
CACHE_TOLERANCE = {torch.float64: 1e-3, torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}

_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class BridgeContractError(RuntimeError):
    """A bridge the circuit engine cannot run on (the message names what is wrong and the fix)."""


@dataclass(frozen=True)
class BridgeContract:
    """What the forward checks found: whether the engine may reuse a prefix cache and ask for last logits only."""

    prefix_cache: bool
    logits_to_keep: bool


def check_structure(bridge) -> None:
    """Type, compatibility mode and the submodules of every block; raises :class:`BridgeContractError`."""
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(bridge, TransformerBridge):
        raise BridgeContractError(f"the circuit engine needs a transformer_lens TransformerBridge, got "
                                  f"{type(bridge).__name__}: load the model with circuitflow.models.load_bridge")
    if getattr(bridge, "compatibility_mode", False):
        raise BridgeContractError("the bridge has compatibility mode enabled (folded, centred weights): load it "
                                  "with circuitflow.models.load_bridge and do not call enable_compatibility_mode()")
    blocks = getattr(bridge, "blocks", None)
    if not blocks:
        raise BridgeContractError(f"the bridge of {bridge.cfg.architecture} has no `blocks`: the circuit engine "
                                  "supports decoder-only transformers with a standard block stack")
    for index, block in enumerate(blocks):
        for name in BLOCK_SUBMODULES:
            try:
                block.get_submodule(name)
            except AttributeError:
                raise BridgeContractError(f"blocks.{index} has no submodule {name!r} ({bridge.cfg.architecture}): "
                                          "the circuit engine reads attention weights and norms from it") from None


def bridge_contract(bridge, hook_names: Iterable[str]) -> BridgeContract:
    """Check the whole contract (see the module docstring); the forward checks run once per bridge."""
    check_structure(bridge)
    hook_names = tuple(dict.fromkeys(hook_names))
    missing = [name for name in hook_names if name not in bridge.hook_dict]
    if missing:
        raise BridgeContractError(f"the bridge ({bridge.cfg.architecture}) has no hook {missing[0]!r}, which the "
                                  "circuit engine reads or writes: this architecture is not supported")
    if bridge not in _CHECKED:
        _CHECKED[bridge] = _forward_checks(bridge, hook_names)
    return _CHECKED[bridge]


def compute_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on. Under accelerate's dispatch (``device_map``) that is its hook's execution
    device, or the first hooked submodule's: an offloaded module keeps its weights on ``meta`` and its hook brings
    them to the execution device for each forward. Otherwise the device of its first parameter."""
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        for single in getattr(hook, "hooks", None) or [hook]:  # accelerate's SequentialHook holds several
            device = getattr(single, "execution_device", None)
            if device is not None:
                return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return next(module.parameters()).device


@contextlib.contextmanager
def loaded_weights(module: torch.nn.Module):
    """Inside this context every parameter of ``module`` that accelerate offloaded (kept on ``meta``, loaded by a hook
    for each forward) is loaded onto its execution device; a no-op for a module that is not offloaded."""
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for sub in module.modules():
            if has_offloaded_params(sub) and any(True for _ in sub.parameters(recurse=False)):
                stack.enter_context(align_module_device(sub))
        yield


def input_device(bridge) -> torch.device:
    """Where tokens go: the device the input embedding computes on (on a model split over devices, not necessarily
    that of the first parameter)."""
    return compute_device(bridge.original_model.get_input_embeddings())


def input_embedding(bridge) -> Tensor:
    """The input embedding matrix of the bridge's model (its dtype is the model's; it may live on ``meta`` when
    offloaded, so tokens go to :func:`input_device`)."""
    return bridge.original_model.get_input_embeddings().weight


def prefix_cache(bridge, prefix: Tensor):
    """The Hugging Face key/value cache of ``prefix`` ``[b, pos]`` (the bridge's ``logits_and_cache`` return)."""
    with warnings.catch_warnings():  # see logits_on_prefix
        warnings.simplefilter("ignore", FutureWarning)
        return bridge(prefix, return_type="logits_and_cache")[1]


def logits_on_prefix(bridge, cache, last: Tensor, n: int) -> Tensor:
    """``[n * b, 1, vocab]``: logits of the last tokens ``last`` ``[b, 1]`` on a copy of ``cache`` (of the b
    prompts' prefixes), each prompt repeated n times variant-major (row i is prompt ``i % b``). Hooks fire as in a
    full forward, on one position. Only valid where :attr:`BridgeContract.prefix_cache` holds."""
    b = last.shape[0]
    cache = copy.deepcopy(cache)
    cache.reorder_cache(torch.arange(b, device=last.device).repeat(n))
    with warnings.catch_warnings():  # `past_key_values` is deprecated in transformers 5.24; the contract checks it
        warnings.simplefilter("ignore", FutureWarning)
        return bridge(last.repeat(n, 1), past_key_values=cache)


@torch.no_grad()
def _forward_checks(bridge, hook_names: tuple[str, ...]) -> BridgeContract:
    vocab = int(bridge.cfg.d_vocab)
    tokens = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0)).to(input_device(bridge))
    fired: set[str] = set()

    def seen(name, tensor, hook):
        fired.add(name)

    with bridge.hooks(fwd_hooks=[(name, partial(seen, name)) for name in hook_names]):
        full = bridge(tokens)[:, -1:]
    silent = [name for name in hook_names if name not in fired]
    if silent:
        raise BridgeContractError(f"hook {silent[0]!r} never fires in a forward pass of this bridge "
                                  f"({bridge.cfg.architecture}): the circuit engine cannot read or patch it")
    dtype = input_embedding(bridge).dtype
    return BridgeContract(prefix_cache=_prefix_cache_agrees(bridge, tokens, full, dtype),
                          logits_to_keep=_logits_to_keep_agrees(bridge, tokens, full, dtype))


def _logits_to_keep_agrees(bridge, tokens: Tensor, full: Tensor, dtype: torch.dtype) -> bool:
    try:
        kept = bridge(tokens, logits_to_keep=1)
    except TypeError:  # a model whose forward does not take the argument
        return False
    scale = 64 * torch.finfo(dtype).eps * float(full.abs().max())
    return kept.shape[1] == 1 and float((kept.double() - full.double()).abs().max()) <= scale


def _prefix_cache_agrees(bridge, tokens: Tensor, full: Tensor, dtype: torch.dtype) -> bool:
    try:
        cached = logits_on_prefix(bridge, prefix_cache(bridge, tokens[:, :-1]), tokens[:, -1:], 2)
    except (TypeError, ValueError, AttributeError, NotImplementedError):  # no usable cache: whole prompts instead
        return False
    alone = bridge(tokens[:, -1:])
    error = float((cached.double() - full.double().repeat(2, 1, 1)).abs().max())
    context = float((alone.double() - full.double()).abs().max())
    return error <= CACHE_TOLERANCE.get(dtype, 5e-2) * context
