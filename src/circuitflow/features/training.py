"""Training sparse dictionaries on cached activations (docs/definitions.md#sparse-dictionaries).

Why our own trainer: eai-sparsify's ``Trainer`` trains TopK dictionaries only and hooks module *outputs*, so it can
neither reach ``hook_z`` (the input of the attention output projection, which an attention SAE reconstructs) nor
train JumpReLU or ReLU+L1 dictionaries. The arithmetic prompt distribution is small (every legal prompt of a toy
model fits in memory), so we run the model once, cache each dictionary's ``(input, target)`` activations at every
position (:func:`collect_activations`) and fit the dictionary to them with Adam (:func:`train_dictionary`).

Training works on activations divided by their root-mean-square norm (``s_in``, ``s_out``), so the learning rate and
sparsity coefficient do not depend on the model's activation scale; the scales are folded back into the weights at
the end (``W_enc / s_in``, ``W_dec · s_out``, ``b_dec · s_out``, ``W_skip · s_out / s_in``; pre-activations are
unchanged, so thresholds are too). Initialisation: decoder rows are random unit vectors, the encoder is the decoder's
transpose (the standard SAE initialisation), ``b_dec`` is the mean target. The loss is the mean squared error of the
reconstructed (normalized) target summed over its dimensions, plus a sparsity term:

* ``topk``: none (the k largest pre-activations are the only active features), but features that have not fired
  for ``DEAD_STEPS`` batches learn to reconstruct the residual through the AuxK loss of Gao et al. 2024 (weight
  ``AUXK_COEF``), which revives dead features;
* ``relu``: ``l1 · Σ_i f_i ‖W_dec[i]‖`` (an L1 penalty that cannot be dodged by shrinking ``f`` and growing
  ``W_dec``);
* ``jumprelu``: ``l1 · Σ_i [pre_i > θ_i]`` (L0), with ``θ ≥ 0`` learned through straight-through
  estimators with a rectangle kernel of width ``ε`` (Rajamanoharan et al. 2024): ``∂f/∂θ = −(θ/ε) K((pre−θ)/ε)``,
  ``∂[pre>θ]/∂θ = −(1/ε) K((pre−θ)/ε)``, ``K(u) = 1[|u| < ½]``.

The learning rate decays linearly to 0 over the last fifth of the steps. Training is deterministic given the seed on
the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitflow.features.dictionary import ACTIVATIONS, SITES, DictionaryInfo, SparseDictionary, hook_names

JUMPRELU_BANDWIDTH = 1e-2  # ε of the straight-through estimators (pre-activations of normalized inputs)
JUMPRELU_INIT_THRESHOLD = 1e-3
DECAY_FRACTION = 0.2  # the learning rate decays linearly to 0 over this last fraction of the steps
AUXK_COEF = 1 / 32  # weight of the topk dead-feature loss (Gao et al. 2024)
DEAD_STEPS = 50  # a feature is dead for the auxiliary loss when it has not fired in this many batches


@dataclass(frozen=True)
class DictionarySpec:
    """How to train a dictionary: ``n_features = expansion · d_in``; ``k`` for topk; ``l1`` the sparsity coefficient
    of relu (an L1 penalty: ~0.1 on the toy) / jumprelu (an L0 penalty: ~1e-3..1e-2); ``skip`` adds a linear skip
    connection to transcoders (SAEs never skip). The defaults meet the issue's targets on the default toy model
    (normalized MSE <= 0.05 per dictionary, + and − accuracy within 2 points with every dictionary spliced)."""

    activation: str = "topk"
    expansion: int = 8
    k: int = 16
    l1: float = 1e-3
    skip: bool = True
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"dictionary activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        for field in ("expansion", "steps", "batch_size"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"dictionary {field} must be >= 1, got {getattr(self, field)}")
        if self.activation == "topk" and self.k < 1:
            raise ValueError(f"dictionary k must be >= 1 for a topk dictionary, got {self.k}")
        if self.activation != "topk" and not self.l1 > 0:
            raise ValueError(f"dictionary l1 must be > 0 for a {self.activation} dictionary, got {self.l1}")
        if not self.lr > 0:
            raise ValueError(f"dictionary lr must be > 0, got {self.lr}")

    def info(self, site: str, layer: int) -> DictionaryInfo:
        """The :class:`DictionaryInfo` of this spec's dictionary at ``site`` / ``layer``."""
        return DictionaryInfo(site, layer, self.activation, self.k if self.activation == "topk" else 0)


@torch.no_grad()
def collect_activations(bridge, tokens: Tensor, infos: Sequence[DictionaryInfo], batch_size: int = 1024,
                        attention_mask: Tensor | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Each dictionary's ``(inputs [N, d_in], targets [N, d_out])`` at every position of every prompt of ``tokens``
    ``[n_prompts, pos]`` (``N = n_prompts · pos``; with ``attention_mask`` ``[n_prompts, pos]`` only its nonzero
    positions), keyed by ``info.name``; one forward per batch. ``hook_z`` ``[b, p, n_heads, d_head]`` is flattened to
    ``n_heads · d_head``. Tensors are on the CPU in the bridge's dtype."""
    names = sorted({name for info in infos for name in hook_names(info)})
    stored: dict[str, list[Tensor]] = {name: [] for name in names}
    for start in range(0, len(tokens), batch_size):
        part = slice(start, start + batch_size)
        mask = None if attention_mask is None else attention_mask[part].bool()

        def store(tensor: Tensor, hook, name: str) -> None:  # [b, p, ...]
            kept = tensor.flatten(0, 1) if mask is None else tensor[mask.to(tensor.device)]
            stored[name].append(kept.flatten(1).detach().cpu())

        hooks = [(name, lambda tensor, hook, name=name: store(tensor, hook, name)) for name in names]
        kwargs = {} if mask is None else {"attention_mask": attention_mask[part]}
        with bridge.hooks(fwd_hooks=hooks):
            bridge(tokens[part], **kwargs)
    cat = {name: torch.cat(parts) for name, parts in stored.items()}
    return {info.name: tuple(cat[name] for name in hook_names(info)) for info in infos}


class _JumpReLU(torch.autograd.Function):
    """``pre · [pre > θ]`` with the straight-through gradient ``−(θ/ε) K((pre−θ)/ε)`` for θ."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        kernel = ((pre - threshold).abs() < ctx.eps / 2).to(grad.dtype)
        grad_threshold = -(threshold / ctx.eps) * (grad * kernel).sum(0)
        return grad * (pre > threshold), grad_threshold, None


class _Step(torch.autograd.Function):
    """``[pre > θ]`` with the straight-through gradient ``−(1/ε) K((pre−θ)/ε)`` for θ (and none for ``pre``)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        kernel = ((pre - threshold).abs() < ctx.eps / 2).to(grad.dtype)
        return None, -(grad * kernel).sum(0) / ctx.eps, None


def _auxk_loss(dictionary: SparseDictionary, pre: Tensor, residual: Tensor, dead: Tensor) -> Tensor:
    """The AuxK loss of Gao et al. 2024: the ``d_out / 2`` largest pre-activations ``[b, n_features]`` among ``dead``
    ``[n_features]`` features reconstruct the batch's residual ``[b, d_out]``; normalized by its variance."""
    k_aux = min(dictionary.d_out // 2, int(dead.sum()))
    if k_aux == 0:
        return pre.new_zeros(())
    top = pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    residual = residual.detach()
    return (f @ dictionary.W_dec - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)


def _rms(x: Tensor) -> float:
    return float(x.pow(2).sum(-1).mean().sqrt().clamp_min(1e-12))


def train_dictionary(inputs: Tensor, targets: Tensor, info: DictionaryInfo, spec: DictionarySpec,
                     progress: bool = True, device: str | torch.device = "cpu") -> SparseDictionary:
    """A dictionary fitted to reconstruct ``targets`` ``[N, d_out]`` from ``inputs`` ``[N, d_in]`` (see the module
    docstring); in the inputs' dtype, trained on ``device`` (initialised on the CPU, so a seed gives the same start
    everywhere) and returned on the CPU."""
    from tqdm.auto import tqdm

    if info.activation != spec.activation:
        raise ValueError(f"dictionary info.activation={info.activation!r} differs from spec.activation="
                         f"{spec.activation!r}: build the info with spec.info(site, layer)")
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"train_dictionary needs as many inputs as targets (>0), got {len(inputs)} and {len(targets)}")
    dtype = inputs.dtype
    s_in, s_out = _rms(inputs), _rms(targets)
    x_all, y_all = inputs.cpu() / s_in, targets.cpu().to(dtype) / s_out
    d_in, d_out, n = x_all.shape[1], y_all.shape[1], spec.expansion * x_all.shape[1]
    gen = torch.Generator().manual_seed(spec.seed)
    W_dec = torch.randn(n, d_out, generator=gen, dtype=dtype)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone() if d_in == d_out else torch.randn(d_in, n, generator=gen, dtype=dtype) / d_in**0.5
    dictionary = SparseDictionary(info, d_in, d_out, n, skip=spec.skip and info.site == "mlp", dtype=dtype)
    with torch.no_grad():
        dictionary.W_dec.copy_(W_dec)
        dictionary.W_enc.copy_(W_enc)
        dictionary.b_dec.copy_(y_all.mean(0))
        if dictionary.threshold is not None:
            dictionary.threshold.fill_(JUMPRELU_INIT_THRESHOLD)
    dictionary, x_all, y_all = dictionary.to(device), x_all.to(device), y_all.to(device)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=spec.lr)
    decay_start = int(spec.steps * (1 - DECAY_FRACTION))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (spec.steps - step) / max(1, spec.steps - decay_start)))
    order = torch.randperm(len(x_all), generator=gen)
    cursor, idle = 0, torch.zeros(n, dtype=torch.long, device=device)  # idle: batches since each feature last fired
    bar = tqdm(range(spec.steps), desc=f"train {info.name}", disable=not progress, mininterval=5)
    for _ in bar:
        if cursor + spec.batch_size > len(order):
            order, cursor = torch.randperm(len(x_all), generator=gen), 0
        batch = order[cursor : cursor + spec.batch_size].to(device)
        cursor += spec.batch_size
        x, y = x_all[batch], y_all[batch]
        pre = dictionary.pre_activation(x)
        if info.activation == "jumprelu":
            f = _JumpReLU.apply(pre, dictionary.threshold, JUMPRELU_BANDWIDTH)
        else:
            f = dictionary.activate(pre)
        residual = y - dictionary.decode(f, x)
        mse = residual.pow(2).sum(-1).mean()
        if info.activation == "relu":
            loss = mse + spec.l1 * (f * dictionary.W_dec.norm(dim=1)).sum(-1).mean()
        elif info.activation == "jumprelu":
            loss = mse + spec.l1 * _Step.apply(pre, dictionary.threshold, JUMPRELU_BANDWIDTH).sum(-1).mean()
        else:
            loss = mse + AUXK_COEF * _auxk_loss(dictionary, pre, residual, idle >= DEAD_STEPS)
        idle = torch.where((f != 0).any(0), 0, idle + 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if dictionary.threshold is not None:
            with torch.no_grad():
                dictionary.threshold.clamp_min_(0)
        bar.set_postfix(mse=mse.item(), refresh=False)
    with torch.no_grad():
        dictionary.W_enc /= s_in
        dictionary.W_dec *= s_out
        dictionary.b_dec *= s_out
        if dictionary.W_skip is not None:
            dictionary.W_skip *= s_out / s_in
    return dictionary.requires_grad_(False).cpu()


def train_dictionaries(bridge, tokens: Tensor, spec: DictionarySpec, sites: Sequence[str] = SITES,
                       layers: Sequence[int] | None = None, batch_size: int = 1024,
                       progress: bool = True) -> dict[str, SparseDictionary]:
    """One dictionary per (site, layer) (all layers by default), trained on the activations of ``tokens``
    ``[n_prompts, pos]``; keyed by name (``mlp0``, ``attn1``, ...)."""
    layers = range(int(bridge.cfg.n_layers)) if layers is None else layers
    infos = [spec.info(site, int(layer)) for site in sites for layer in layers]
    activations = collect_activations(bridge, tokens, infos, batch_size)
    return {info.name: train_dictionary(*activations[info.name], info, spec, progress) for info in infos}
