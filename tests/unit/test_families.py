"""The circuit engine on more model families (Mistral with and without a sliding window, Qwen2's q/k/v biases,
Qwen3's q/k norms, OLMo's non-parametric norms) against its definitions, and the families it cannot represent
exactly (Gemma-2/3 and OLMo-2 normalise a block's output after the heads write it) refused in one line.

Norm weights and biases are drawn away from their identity initialisation, so a norm the engine mishandled would
show. The four architectures of tests/conftest.py's TINY_ARCHS run the full suite in test_circuits.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitflow.circuits import Tracer, attribute, split_batches
from circuitflow.circuits.tracing import metric_values
from circuitflow.metrics import logit_diff
from circuitflow.models import ModelHandle, load_bridge
from circuitflow.models.contract import BridgeContractError
from circuitflow.toy import build_tokenizer
from tests.conftest import MORE_FAMILIES, REFUSED_FAMILIES, TINY_ARCHS, tiny_config
from tests.unit.test_circuits import assert_full_is_clean_and_empty_is_corrupt, random_pairs


def bridge_of(family: str, folder) -> object:
    """A float64 bridge of a tiny random ``family`` model whose 1-d weights (norms, biases) are off identity."""
    tokenizer = build_tokenizer(20)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_bridge(ModelHandle(family, str(folder)), device="cpu", dtype="float64")


@pytest.fixture(scope="module", params=MORE_FAMILIES)
def family(request, tmp_path_factory):
    bridge = bridge_of(request.param, tmp_path_factory.mktemp(request.param))
    return bridge, Tracer(bridge)


def test_full_graph_is_clean_and_empty_graph_is_corrupt(family):
    assert_full_is_clean_and_empty_is_corrupt(family[1], atol=1e-9)


def test_eap_equals_the_finite_difference_of_the_masked_run(family):
    bridge, tracer = family
    batch = random_pairs(3)
    eap = attribute(bridge, [batch], logit_diff, "EAP", tracer=tracer, progress=False)
    g = tracer.shape
    edges = g.valid.nonzero()
    eps = 1e-3  # these families' norms compute in float32 inside a float64 model (as Llama's): see test_circuits
    missing = torch.zeros(2 * len(edges), g.n_up, g.n_down, dtype=torch.float64)
    rows = torch.arange(len(edges))
    missing[rows, edges[:, 0], edges[:, 1]] = eps
    missing[rows + len(edges), edges[:, 0], edges[:, 1]] = -eps
    clean, _ = tracer.outputs(batch.clean)
    values = metric_values(logit_diff, tracer.run_masked(batch, missing, tracer.reference(batch, "patching")),
                           clean, batch).mean(1)
    finite_diff = (values[: len(edges)] - values[len(edges):]) / (2 * eps)
    assert finite_diff.abs().max() > 1e-3
    torch.testing.assert_close(eap.scores[edges[:, 0], edges[:, 1]].double(), finite_diff, rtol=1e-2, atol=2e-5)


def test_scores_do_not_depend_on_batch_split(family):
    bridge, tracer = family
    whole = [random_pairs(4, seed=1)]
    one = attribute(bridge, whole, logit_diff, "EAP-IG-inputs", ig_steps=2, tracer=tracer, progress=False)
    two = attribute(bridge, split_batches(whole, 2), logit_diff, "EAP-IG-inputs", ig_steps=2, tracer=tracer,
                    progress=False)
    torch.testing.assert_close(one.scores, two.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", TINY_ARCHS + MORE_FAMILIES)
def test_cutting_every_edge_of_a_node_equals_patching_it_in_the_model(arch, tmp_path):
    """The engine's node (a head's z @ W_O, an MLP's output) is what the model's own hook patching moves: patching
    head 1 of layer 0 (its z) or the MLP of layer 0 from the corrupt run, in the model, gives the logits of the masked
    run with all of that node's outgoing edges cut."""
    bridge = bridge_of(arch, tmp_path)
    tracer = Tracer(bridge)
    g, la = tracer.shape, tracer.anatomy.layers[0]
    batch = random_pairs(3)
    _, corrupt_up = tracer.outputs(batch.corrupt)
    for hook, unit, node in ((la.hooks["z"], 1, g.head_up(0).start + 1), (la.hooks["mlp_out"], None, g.mlp_up(0))):
        _, store = tracer.capture(batch.corrupt, {"corrupt": hook})

        def patch(tensor, hook, unit=unit, source=store["corrupt"]):
            tensor = tensor.clone()
            if unit is None:
                return source
            tensor[:, :, unit] = source[:, :, unit]
            return tensor

        with bridge.hooks(fwd_hooks=[(hook, patch)]):
            patched = bridge(batch.clean)
        missing = torch.zeros(1, g.n_up, g.n_down, dtype=torch.bool)
        missing[0, node] = g.valid[node]
        torch.testing.assert_close(tracer.run_masked(batch, missing, corrupt_up), patched, rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", REFUSED_FAMILIES)
def test_a_family_the_engine_cannot_represent_is_refused_in_one_line(arch, tmp_path):
    bridge = bridge_of(arch, tmp_path)
    with pytest.raises(BridgeContractError) as err:
        Tracer(bridge)
    message = str(err.value)
    assert "\n" not in message and ("refused" in message or "has no submodule" in message), message
