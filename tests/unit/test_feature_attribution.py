"""Attribution graphs of the replacement model (docs/definitions.md#feature-attribution-graphs): the replacement
model reproduces the model at the prompt, every target's inputs sum to its value (completeness by construction),
and every edge equals a single-source intervention on the replacement model computed without gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitflow.features import DictionaryInfo, SparseDictionary
from circuitflow.features.attribution import AttributionError, AttributionGraph, ReplacementModel, attribution_graph
from circuitflow.models import ModelHandle, load_bridge
from circuitflow.toy import build_tokenizer
from tests.conftest import save_tiny_model

PROMPT = "3+14="


def random_dictionaries(n_layers: int, d_model: int, d_z: int, attention: bool = True, seed: int = 0,
                        n_features: int = 24, k: int = 4) -> dict[str, SparseDictionary]:
    """Random topk transcoders (with skip) for every MLP and, with ``attention``, random attention SAEs."""
    torch.manual_seed(seed)
    out = {}
    for layer in range(n_layers):
        for site, dim in [("mlp", d_model), ("attn", d_z)][: 2 if attention else 1]:
            d = SparseDictionary(DictionaryInfo(site, layer, "topk", k=k), dim, dim, n_features,
                                 skip=site == "mlp", dtype=torch.float64)
            for param in d.parameters():
                torch.nn.init.normal_(param, std=0.3)
            out[d.info.name] = d
    return out


@pytest.fixture(scope="module", params=["gpt_neox", "llama_gqa", "gpt2"])
def setup(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    bridge = load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64")
    dictionaries = random_dictionaries(2, 32, 32)
    tokenizer = build_tokenizer(20)
    return bridge, tokenizer, dictionaries, attribution_graph(bridge, tokenizer, PROMPT, dictionaries)


def all_targets(model: ReplacementModel, logits: torch.Tensor, inputs: dict, graph: AttributionGraph) -> torch.Tensor:
    """Every target node's value in each batch row, ``[batch, n_targets]``, computed straight from the dictionaries'
    pre-activations and the logits (not through the library's per-row target selection)."""
    columns = []
    for row in graph.nodes.itertuples():
        if row.kind == "feature":
            d = next(d for d in model.dictionaries if d.info.name == row.dictionary)
            columns.append(d.pre_activation(inputs[row.dictionary][:, row.position])[:, row.feature])
        elif row.kind == "logit":
            last = logits[:, -1]
            columns.append(last[:, row.token_id] - last.mean(-1))
    return torch.stack(columns, 1)


def test_replacement_model_is_the_model_at_the_prompt(setup):
    bridge, tokenizer, dictionaries, graph = setup
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"][0]
    model = ReplacementModel(bridge, dictionaries, ids)
    zero = torch.zeros(1, *model.embedding.shape, dtype=torch.float64)
    with torch.no_grad():
        logits, inputs = model.run(zero, [torch.zeros(1, *e.shape, dtype=torch.float64) for e in model.errors])
        clean = bridge(ids[None])[0]
        # HF's LlamaRMSNorm computes in float32 even in a float64 model; frozen norms compute in float64
        atol = 1e-3 * clean.abs().max() if "Llama" in type(bridge.original_model).__name__ else 1e-10
        torch.testing.assert_close(logits[0], clean, rtol=0, atol=atol)
        # feature nodes are exactly the active features, with the pre-activations of the clean inputs
        features = graph.nodes[graph.nodes["kind"] == "feature"]
        for name, rows in features.groupby("dictionary"):
            d = dictionaries[name]
            pre = d.pre_activation(inputs[name][0])
            active = set(map(tuple, torch.nonzero(d.activate(pre) > 0).tolist()))
            assert set(zip(rows["position"], rows["feature"])) == active
            values = graph.target_value[torch.as_tensor(rows.index.to_numpy())]
            torch.testing.assert_close(values, pre[rows["position"].to_numpy(), rows["feature"].to_numpy()])
    probs = clean[-1].softmax(-1)  # of the model itself
    assert graph.logit_probabilities.sum() >= 0.95 or len(graph.index("logit")) == 10
    tokens = graph.nodes.loc[graph.index("logit").numpy(), "token_id"].to_numpy()
    torch.testing.assert_close(graph.logit_probabilities, probs[tokens])


def test_inputs_sum_to_each_target(setup):
    graph = setup[3]
    assert graph.completeness_error < 1e-10
    sources = torch.cat([graph.index("error"), graph.index("embedding")])
    assert graph.adjacency[sources].abs().max() == 0  # sources have no inputs
    assert graph.adjacency[:, graph.index("logit")].abs().max() == 0  # logits feed nothing


def test_every_edge_is_a_single_source_intervention(setup):
    """Remove one source at a time (its activation, error or embedding set to zero, all other sources held) and read
    every target: the change is that source's column of the adjacency matrix."""
    bridge, tokenizer, dictionaries, graph = setup
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"][0]
    model = ReplacementModel(bridge, dictionaries, ids)
    nodes = graph.nodes
    sources = nodes[nodes["kind"] != "logit"]
    n = len(sources)
    emb = torch.zeros(n, *model.embedding.shape, dtype=torch.float64)
    deltas = [torch.zeros(n, *e.shape, dtype=torch.float64) for e in model.errors]
    names = [d.info.name for d in model.dictionaries]
    for i, row in enumerate(sources.itertuples()):
        if row.kind == "embedding":
            emb[i, row.position] = -model.embedding[row.position]
        elif row.kind == "error":
            which = names.index(row.dictionary)
            deltas[which][i, row.position] = -model.errors[which][row.position]
        else:
            d = dictionaries[row.dictionary]
            deltas[names.index(row.dictionary)][i, row.position] = -row.activation * d.W_dec[row.feature]
    with torch.no_grad():
        base = all_targets(model, *model.run(emb[:1] * 0, [x[:1] * 0 for x in deltas]), graph)
        removed = all_targets(model, *model.run(emb, deltas), graph)
    targets = torch.as_tensor(nodes.index[nodes["kind"].isin(["feature", "logit"])].to_numpy())
    expected = graph.adjacency[targets][:, torch.as_tensor(sources.index.to_numpy())]
    torch.testing.assert_close((base - removed).T, expected, rtol=1e-8, atol=1e-10)
    assert expected.abs().max() > 1e-3  # the check is not vacuous


def _scaled_sources(model: ReplacementModel, sources, dictionaries, eps: float) -> tuple[torch.Tensor, list]:
    """Perturbations that scale one source per batch row by (1 + eps), then by (1 − eps): ``[2 n_sources, ...]``."""
    n = len(sources)
    emb = torch.zeros(2 * n, *model.embedding.shape, dtype=torch.float64)
    deltas = [torch.zeros(2 * n, *e.shape, dtype=torch.float64) for e in model.errors]
    names = [d.info.name for d in model.dictionaries]
    for i, row in enumerate(sources.itertuples()):
        for r, sign in ((i, eps), (n + i, -eps)):
            if row.kind == "embedding":
                emb[r, row.position] = sign * model.embedding[row.position]
            elif row.kind == "error":
                which = names.index(row.dictionary)
                deltas[which][r, row.position] = sign * model.errors[which][row.position]
            else:
                d = dictionaries[row.dictionary]
                deltas[names.index(row.dictionary)][r, row.position] = sign * row.activation * d.W_dec[row.feature]
    return emb, deltas


def _held(clean: dict[str, torch.Tensor], names: list[str]) -> list:
    """Hooks that replace each named activation by its value in the clean run (every batch row)."""
    return [(name, lambda tensor, hook, c=clean[name]: c.expand_as(tensor).to(tensor.dtype)) for name in names]


@pytest.mark.parametrize("path", ["q", "k", "both"])
def test_q_and_k_edges_are_derivatives_through_the_pattern(setup, path):
    """LEAP's typed edges into attention features, against central finite differences without gradients: scaling a
    source by 1 ± eps with layer L's pattern live and (for Q) its keys and values held at their clean values, (for K)
    its queries and values held. With nothing held, the derivative is the whole first-order effect: OV + Q + K."""
    bridge, tokenizer, dictionaries, graph = setup
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"][0]
    model = ReplacementModel(bridge, dictionaries, ids)
    nodes = graph.nodes
    qk = nodes.loc[graph.qk_targets.numpy()]
    assert len(qk) > 0 and (qk["kind"] == "feature").all() and (qk["site"] == "attn").all()
    assert len(qk) == ((nodes["kind"] == "feature") & (nodes["site"] == "attn")).sum()
    sources = nodes[nodes["kind"] != "logit"]
    targets = nodes.index[nodes["kind"].isin(["feature", "logit"])]
    hooked = [f"blocks.{layer}.attn.hook_{x}" for layer in qk["layer"].unique() for x in "qkv"]
    clean = {}
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, lambda t, hook, n=n: clean.update({n: t})) for n in hooked]):
        bridge(ids[None])
    # HF's Llama computes its norms and softmax in float32 even in a float64 model: a larger step (Richardson's
    # extrapolation keeps the error O(h⁴)) and float32's precision relative to the largest target value
    llama = "Llama" in type(bridge.original_model).__name__
    step, atol = (4e-3, 5e-6 * graph.target_value.abs().max()) if llama else (1e-4, 1e-9)
    largest = 0.0
    for layer in qk["layer"].unique():
        held = _held(clean, [f"blocks.{layer}.attn.hook_{x}" for x in {"q": "kv", "k": "qv", "both": ""}[path]])

        def central(eps: float) -> torch.Tensor:  # [n_sources, n_targets]
            with torch.no_grad():
                values = all_targets(model, *model.run(*_scaled_sources(model, sources, dictionaries, eps),
                                                       live_layer=int(layer), hooks=held), graph)
            return (values[: len(sources)] - values[len(sources):]) / (2 * eps)

        derivative = (4 * central(step / 2) - central(step)) / 3
        mine = np.flatnonzero(qk["layer"].to_numpy() == layer)
        columns = np.searchsorted(targets.to_numpy(), qk.index.to_numpy()[mine])
        q, k = (m[torch.as_tensor(mine)][:, torch.as_tensor(sources.index.to_numpy())]
                for m in (graph.q_adjacency, graph.k_adjacency))
        expected = {"q": q, "k": k, "both": q + k + graph.adjacency[torch.as_tensor(qk.index.to_numpy()[mine])][
            :, torch.as_tensor(sources.index.to_numpy())]}[path]
        torch.testing.assert_close(derivative[:, columns].T, expected, rtol=1e-5, atol=atol)
        largest = max(largest, float(expected.abs().max()))
    assert largest > 1e-3  # the check is not vacuous


def test_no_q_and_k_edges_on_request(setup):
    bridge, tokenizer, dictionaries, graph = setup
    plain = attribution_graph(bridge, tokenizer, PROMPT, dictionaries, qk_edges=False)
    assert plain.qk_targets is None and plain.q_adjacency is None
    torch.testing.assert_close(plain.adjacency, graph.adjacency)


def test_batch_size_does_not_change_the_graph(setup):
    bridge, tokenizer, dictionaries, graph = setup
    small = attribution_graph(bridge, tokenizer, PROMPT, dictionaries, batch=7)
    for name in ("adjacency", "q_adjacency", "k_adjacency"):
        torch.testing.assert_close(getattr(small, name), getattr(graph, name), rtol=1e-9, atol=1e-12)


def test_save_and_load(setup, tmp_path):
    graph = setup[3]
    graph.save(tmp_path / "g.pt")
    back = AttributionGraph.load(tmp_path / "g.pt")
    for name in ("adjacency", "qk_targets", "q_adjacency", "k_adjacency"):
        torch.testing.assert_close(getattr(back, name), getattr(graph, name))
    assert back.nodes.equals(graph.nodes) and back.tokens == graph.tokens


def test_transcoders_without_attention_saes(setup):
    bridge, tokenizer, _, _ = setup
    graph = attribution_graph(bridge, tokenizer, PROMPT, random_dictionaries(2, 32, 32, attention=False))
    assert set(graph.nodes["site"]) == {"mlp", ""} and graph.completeness_error < 1e-10


def test_bad_dictionaries_are_refused(setup, tmp_path):
    bridge, tokenizer, dictionaries, _ = setup
    with pytest.raises(AttributionError, match=r"transcoder for every MLP: none for layer\(s\) \[1\]"):
        attribution_graph(bridge, tokenizer, PROMPT, {k: v for k, v in dictionaries.items() if k != "mlp1"})
    gptj = load_bridge(ModelHandle("tiny", str(save_tiny_model("gptj", tmp_path / "gptj"))), device="cpu",
                       dtype="float64")
    with pytest.raises(AttributionError, match="ignores edits of attention patterns"):
        attribution_graph(gptj, tokenizer, PROMPT, dictionaries)
