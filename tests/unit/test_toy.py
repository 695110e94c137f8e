import pandas as pd
import pytest
import torch

from circuitflow.recipes import ToyRecipe, recipe_from_dict
from circuitflow.toy import build_tokenizer, make_data


def test_tokenizer_one_token_per_number_and_symbol():
    tok = build_tokenizer(99)
    ids = tok("12+7=")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["12", "+", "7", "="]
    assert all(len(tok(str(n), add_special_tokens=False)["input_ids"]) == 1 for n in range(100))
    assert tok.convert_ids_to_tokens(tok("100")["input_ids"]) == ["<unk>"]
    assert tok.decode(tok("3*4=12")["input_ids"]) == "3*4=12"


def test_heldout_split_is_disjoint_and_seeded():
    recipe = ToyRecipe(max_number=20, heldout_fraction=0.2, seed=3)
    a, b = make_data(recipe, build_tokenizer(20)), make_data(recipe, build_tokenizer(20))
    for op in recipe.operators:
        train = {tuple(t.tolist()) for t in a.train_tokens[op]}
        held = {tuple(t.tolist()) for t in a.heldout_tokens[op]}
        assert not train & held
        assert torch.equal(a.heldout_tokens[op], b.heldout_tokens[op])


def test_training_log_and_checkpoints(toy_dir):
    log = pd.read_parquet(toy_dir / "log.parquet")
    assert set(log["step"]) == {0, 150}
    assert (toy_dir / "checkpoints" / "step150" / "config.json").exists()
    first, last = (log[log["step"] == s]["heldout_loss"].mean() for s in (0, 150))
    assert last < first  # training reduced the held-out loss
    assert log["heldout_accuracy"].between(0, 1).all()


def test_training_is_deterministic(tmp_path, toy_dir):
    from safetensors.torch import load_file

    from circuitflow.toy import train_toy
    from tests.conftest import TINY_RECIPE

    train_toy(TINY_RECIPE, tmp_path / "again", tmp_path / "log.parquet")
    a = load_file(str(toy_dir / "checkpoints" / "step150" / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "step150" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match=r"models.toy.recipe: unknown key\(s\) \['layers'\]"):
        recipe_from_dict(ToyRecipe, {"layers": 3}, "models.toy.recipe")
    with pytest.raises(ValueError, match="checkpoint_steps"):
        ToyRecipe(steps=10, checkpoint_steps=(20,))
