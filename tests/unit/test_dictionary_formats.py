"""Reading published dictionaries: each test writes files laid out like the library's own (SAELens, circuit-tracer,
sparsify) and checks that the loaded dictionary's encode / decode equal the library's formula computed here."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from circuitflow.features.dictionary import DictionaryInfo, SparseDictionary
from circuitflow.features.formats import check_fits, detect_format, load_dictionary

D, N = 6, 20


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(50, D, generator=torch.Generator().manual_seed(1))


def weights(seed: int = 0, **shapes) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=gen) for name, shape in shapes.items()}


def keep_top(acts: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries of each row of ``acts`` (>= 0), the rest 0 (ties are measure-zero)."""
    kth = acts.sort(-1, descending=True).values[:, k - 1 : k]
    return acts * (acts >= kth)


def write_saelens(path, architecture: str, w: dict, **cfg) -> None:
    path.mkdir()
    save_file(w, path / "sae_weights.safetensors")
    (path / "cfg.json").write_text(json.dumps(dict(architecture=architecture, d_in=D, d_sae=N, **cfg)))


def check(dictionary: SparseDictionary, x: torch.Tensor, features: torch.Tensor, out: torch.Tensor) -> None:
    f = dictionary.encode(x)
    torch.testing.assert_close(f, features)
    torch.testing.assert_close(dictionary.decode(f, x), out)
    assert (features != 0).any() and (features == 0).any()


def test_saelens_standard_folds_b_dec_into_the_encoder(tmp_path, x):
    w = weights(W_enc=(D, N), b_enc=(N,), W_dec=(N, D), b_dec=(D,))
    write_saelens(tmp_path / "sae", "standard", w, apply_b_dec_to_input=True, hook_name="blocks.0.hook_mlp_out")
    dictionary = load_dictionary(tmp_path / "sae", site="mlp", layer=0)
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    check(dictionary, x, f, f @ w["W_dec"] + w["b_dec"])
    assert dictionary.info == DictionaryInfo("mlp", 0, "relu")


def test_saelens_jumprelu_with_negative_thresholds_and_no_centring(tmp_path, x):
    w = weights(W_enc=(D, N), b_enc=(N,), W_dec=(N, D), b_dec=(D,), threshold=(N,))
    write_saelens(tmp_path / "sae", "jumprelu", w, apply_b_dec_to_input=False)
    dictionary = load_dictionary(tmp_path / "sae", format="saelens", site="attn", layer=1)
    pre = x @ w["W_enc"] + w["b_enc"]
    f = torch.relu(pre) * (pre > w["threshold"])  # SAELens: the base ReLU, then the threshold mask
    check(dictionary, x, f, f @ w["W_dec"] + w["b_dec"])
    assert (w["threshold"] < 0).any() and dictionary.info.activation == "jumprelu"


@pytest.mark.parametrize("k_field", ["top", "kwargs"])
def test_saelens_topk_reads_k_from_either_config_layout(tmp_path, x, k_field):
    w = weights(W_enc=(D, N), b_enc=(N,), W_dec=(N, D), b_dec=(D,))
    cfg = dict(k=3) if k_field == "top" else dict(activation_fn_kwargs=dict(k=3))
    write_saelens(tmp_path / "sae", "topk", w, **cfg)
    dictionary = load_dictionary(tmp_path / "sae", site="mlp", layer=0)
    f = keep_top(torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]), 3)
    check(dictionary, x, f, f @ w["W_dec"] + w["b_dec"])
    assert dictionary.info.k == 3


def test_saelens_skip_transcoder(tmp_path, x):
    w = weights(W_enc=(D, N), b_enc=(N,), W_dec=(N, D), b_dec=(D,), W_skip=(D, D))  # W_skip [d_out, d_in]
    write_saelens(tmp_path / "tc", "skip_transcoder", w, d_out=D, apply_b_dec_to_input=True)
    dictionary = load_dictionary(tmp_path / "tc", site="mlp", layer=0)
    f = torch.relu(x @ w["W_enc"] + w["b_enc"])  # transcoders never centre their input
    check(dictionary, x, f, f @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T)


@pytest.mark.parametrize("jump", [True, False])
def test_circuit_tracer_transcoder_set(tmp_path, x, jump):
    shapes = dict(W_enc=(N, D), b_enc=(N,), W_dec=(N, D), b_dec=(D,), W_skip=(D, D))
    w = weights(**shapes, **({"activation_function.threshold": (N,)} if jump else {}))
    if jump:
        w["activation_function.threshold"] = w["activation_function.threshold"].abs()
    (tmp_path / "set").mkdir()
    save_file(w, tmp_path / "set" / "layer_1.safetensors")
    assert detect_format(tmp_path / "set", 1) == "circuit-tracer"
    dictionary = load_dictionary(tmp_path / "set", site="mlp", layer=1)
    pre = F.linear(x, w["W_enc"], w["b_enc"])
    f = pre * (pre > w["activation_function.threshold"]) if jump else torch.relu(pre)
    check(dictionary, x, f, f @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T)
    assert dictionary.info.activation == ("jumprelu" if jump else "relu")
    single = load_dictionary(tmp_path / "set" / "layer_1.safetensors", site="mlp", layer=1)
    torch.testing.assert_close(single.encode(x), f)


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify(tmp_path, x, transcode):
    w = weights(**{"encoder.weight": (N, D), "encoder.bias": (N,), "W_dec": (N, D), "b_dec": (D,), "W_skip": (D, D)})
    (tmp_path / "layers.0").mkdir()
    save_file(w, tmp_path / "layers.0" / "sae.safetensors")
    cfg = dict(activation="topk", expansion_factor=4, normalize_decoder=True, num_latents=N, k=4, multi_topk=False,
               skip_connection=True, transcode=transcode, d_in=D)
    (tmp_path / "layers.0" / "cfg.json").write_text(json.dumps(cfg))
    dictionary = load_dictionary(tmp_path / "layers.0", site="mlp", layer=0)
    sae_in = x if transcode else x - w["b_dec"]
    f = keep_top(torch.relu(F.linear(sae_in, w["encoder.weight"], w["encoder.bias"])), 4)
    check(dictionary, x, f, f @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].mT)


def test_native_round_trip_and_wrong_site(tmp_path, x):
    original = SparseDictionary(DictionaryInfo("attn", 0, "jumprelu"), D, D, N)
    for name, value in weights(W_enc=(D, N), b_enc=(N,), W_dec=(N, D), b_dec=(D,), threshold=(N,)).items():
        getattr(original, name).data.copy_(value)
    original.save(tmp_path / "native")
    loaded = load_dictionary(tmp_path / "native", site="attn", layer=0)
    torch.testing.assert_close(loaded(x), original(x).detach())
    with pytest.raises(ValueError, match="not mlp0"):
        load_dictionary(tmp_path / "native", site="mlp", layer=0)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        load_dictionary(tmp_path, format="sae", site="mlp", layer=0)
    with pytest.raises(ValueError, match="no dictionary format recognised"):
        load_dictionary(tmp_path, site="mlp", layer=0)
    with pytest.raises(ValueError, match="does not exist"):
        load_dictionary(tmp_path / "nothing", site="mlp", layer=0)
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(ValueError, match="sae.safetensors is missing"):
        load_dictionary(tmp_path, format="sparsify", site="mlp", layer=0)
    bad = weights(W_enc=(D, N), b_enc=(N,), W_dec=(N + 1, D), b_dec=(D,))
    write_saelens(tmp_path / "bad", "standard", bad)
    with pytest.raises(ValueError, match=r"W_dec has shape \(21, 6\), expected \(20, 6\)"):
        load_dictionary(tmp_path / "bad", site="mlp", layer=0)
    write_saelens(tmp_path / "gated", "gated", bad)
    with pytest.raises(ValueError, match="architecture 'gated'"):
        load_dictionary(tmp_path / "gated", site="mlp", layer=0)


def test_hub_paths_download_only_the_folder(tmp_path, monkeypatch, x):
    import huggingface_hub

    w = weights(W_enc=(N, D), b_enc=(N,), W_dec=(N, D), b_dec=(D,))
    (tmp_path / "repo" / "tc").mkdir(parents=True)
    save_file(w, tmp_path / "repo" / "tc" / "layer_0.safetensors")
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path / "repo")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    dictionary = load_dictionary("owner/name/tc", format="circuit-tracer", site="mlp", layer=0, revision="v1")
    torch.testing.assert_close(dictionary.encode(x), torch.relu(F.linear(x, w["W_enc"], w["b_enc"])))
    assert calls == [("owner/name", "v1", ["tc/layer_0.safetensors", "tc/*.json", "tc/*.yaml"])]


def test_check_fits_compares_widths_with_the_model():
    cfg = SimpleNamespace(d_model=D, n_heads=2, d_head=4, n_layers=2)
    bridge = SimpleNamespace(cfg=cfg)
    check_fits(SparseDictionary(DictionaryInfo("mlp", 1, "relu"), D, D, N), bridge)
    check_fits(SparseDictionary(DictionaryInfo("attn", 0, "relu"), 8, 8, N), bridge)
    with pytest.raises(ValueError, match="maps 6 -> 6 dims but the model's attn site has 8"):
        check_fits(SparseDictionary(DictionaryInfo("attn", 0, "relu"), D, D, N), bridge)
    with pytest.raises(ValueError, match="layer 2 is outside"):
        check_fits(SparseDictionary(DictionaryInfo("mlp", 2, "relu"), D, D, N), bridge)
