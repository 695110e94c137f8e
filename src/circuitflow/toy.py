"""The embedded default model: a small transformer trained from scratch on arithmetic.

Its architecture is the recipe's: GPT-NeoX (Pythia; the default), Llama (grouped-query attention, RMSNorm, gated MLP)
or GPT-2 (learned positional embeddings); tokenizer, data, training and checkpoints are the same for all three.

Every integer ``0..max_number`` is a single token of a word-level tokenizer, so a prompt ``"x+y="`` is 4 tokens and
the answer is one token. The model is trained with cross-entropy on the answer token only, on batches balanced over
the four operators, and saves Hugging Face checkpoints at configured steps (the analogue of Pythia's ``stepN``
revisions) plus a log of loss and held-out accuracy per operator. Training is deterministic given the seed on CPU.

:func:`finetune_lora` trains a peft LoRA adapter on a subset of operators (the analogue of the add/sub fine-tune of
pythia-1.4b-deduped in the arithmetic-heuristics paper).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from circuitflow.arithmetic import SYMBOLS, answers, legal_pairs
from circuitflow.io import atomic_dir, write_parquet
from circuitflow.recipes import LoraRecipe, ToyRecipe, recipe_from_dict

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PUNCTUATION = ("+", "-", "*", "/", "=", ";")


def build_tokenizer(max_number: int):
    """A word-level ``PreTrainedTokenizerFast`` where each of ``0..max_number`` and ``+ - * / = ;`` is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [*SPECIAL_TOKENS, *(str(n) for n in range(max_number + 1)), *PUNCTUATION]
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d+|[^\d\s]"), behavior="isolated")]
    )
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


MAX_POSITIONS = 64


def model_config(recipe: ToyRecipe, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    """The Hugging Face config of the recipe's architecture and shape (untied embeddings, no dropout)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False, pad_token_id=pad_id, bos_token_id=bos_id,
                  eos_token_id=eos_id)
    if recipe.architecture == "llama":
        return LlamaConfig(hidden_size=recipe.d_model, num_hidden_layers=recipe.n_layers,
                           num_attention_heads=recipe.n_heads, num_key_value_heads=recipe.n_kv_heads,
                           intermediate_size=recipe.d_mlp, max_position_embeddings=MAX_POSITIONS, **common)
    if recipe.architecture == "gpt2":
        return GPT2Config(n_embd=recipe.d_model, n_layer=recipe.n_layers, n_head=recipe.n_heads, n_inner=recipe.d_mlp,
                          n_positions=MAX_POSITIONS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    return GPTNeoXConfig(hidden_size=recipe.d_model, num_hidden_layers=recipe.n_layers,
                         num_attention_heads=recipe.n_heads, intermediate_size=recipe.d_mlp,
                         rotary_pct=recipe.rotary_pct, max_position_embeddings=MAX_POSITIONS,
                         use_parallel_residual=True, attention_dropout=0.0, hidden_dropout=0.0, **common)


def build_model(recipe: ToyRecipe, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    """A randomly initialised causal LM of the recipe's architecture and shape (seeded)."""
    from transformers import AutoModelForCausalLM

    config = model_config(recipe, vocab_size, pad_id, bos_id, eos_id)
    torch.manual_seed(recipe.seed)
    return AutoModelForCausalLM.from_config(config)


@dataclass
class ArithmeticData:
    """Token ids of the train/held-out prompts of each operator: ``tokens[op]`` is [n, 4], ``targets[op]`` is [n]."""

    train_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    train_targets: dict[str, torch.Tensor] = field(default_factory=dict)
    heldout_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    heldout_targets: dict[str, torch.Tensor] = field(default_factory=dict)


def make_data(recipe: ToyRecipe, tokenizer) -> ArithmeticData:
    """Split each operator's legal pairs (operands and answers in ``0..max_number``) into train and held-out."""
    rng = np.random.default_rng(recipe.seed)
    vocab = tokenizer.get_vocab()
    data = ArithmeticData()
    for op in recipe.operators:
        pairs = legal_pairs(op, recipe.max_number, recipe.max_number, "floor")
        ids = np.array(
            [[vocab[str(x)], vocab[SYMBOLS[op]], vocab[str(y)], vocab["="]] for x, y in pairs], dtype=np.int64
        )
        target = np.array([vocab[str(r)] for r in answers(op, pairs[:, 0], pairs[:, 1])], dtype=np.int64)
        order = rng.permutation(len(pairs))
        n_held = max(1, int(round(recipe.heldout_fraction * len(pairs))))
        held, train = order[:n_held], order[n_held:]
        data.train_tokens[op], data.train_targets[op] = torch.from_numpy(ids[train]), torch.from_numpy(target[train])
        data.heldout_tokens[op] = torch.from_numpy(ids[held])
        data.heldout_targets[op] = torch.from_numpy(target[held])
    return data


@torch.no_grad()
def answer_accuracy(model, tokens: torch.Tensor, targets: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean loss) of the argmax at the last position of ``tokens`` [n, seq] against ``targets`` [n]."""
    correct, loss = 0, 0.0
    for start in range(0, len(tokens), batch_size):
        logits = model(tokens[start : start + batch_size]).logits[:, -1]
        t = targets[start : start + batch_size]
        correct += int((logits.argmax(-1) == t).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, t, reduction="sum"))
    return correct / len(tokens), loss / len(tokens)


def _balanced_batch(
    data: ArithmeticData, ops: Sequence[str], batch_size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    per_op = -(-batch_size // len(ops))
    toks, tgts = [], []
    for op in ops:
        idx = torch.randint(len(data.train_tokens[op]), (per_op,), generator=gen)
        toks.append(data.train_tokens[op][idx])
        tgts.append(data.train_targets[op][idx])
    return torch.cat(toks), torch.cat(tgts)


def _lr_lambda(recipe: ToyRecipe) -> Callable[[int], float]:
    def schedule(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        floor = recipe.final_lr_fraction
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def _train_loop(
    model,
    data: ArithmeticData,
    ops: Sequence[str],
    steps: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler,
    gen: torch.Generator,
    on_step: Callable[[int, float], None],
) -> None:
    """Run ``steps`` optimizer steps with answer-only loss, calling ``on_step(step_done, loss)`` after each."""
    from tqdm.auto import tqdm

    model.train()
    for step in tqdm(range(1, steps + 1), desc="training", mininterval=5):
        tokens, targets = _balanced_batch(data, ops, batch_size, gen)
        loss = torch.nn.functional.cross_entropy(model(tokens).logits[:, -1], targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        on_step(step, loss.item())
    model.eval()


def save_hf_dir(model, tokenizer, path: Path, metadata: dict) -> None:
    """Save a model and tokenizer as a Hugging Face directory atomically, with ``circuitflow.json`` metadata."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "circuitflow.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))


def train_toy(recipe: ToyRecipe, out_dir: Path, log_path: Path) -> pd.DataFrame:
    """Train the toy model; write ``out_dir/step{N}`` checkpoints and a parquet log; return the log.

    The log has one row per checkpoint and operator: ``step, operator, train_loss, heldout_loss, heldout_accuracy,
    n_heldout``.
    """
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer(recipe.max_number)
    model = build_model(recipe, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    data = make_data(recipe, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe))
    gen = torch.Generator().manual_seed(recipe.seed)
    rows: list[dict] = []
    recent: list[float] = []

    def checkpoint(step: int) -> None:
        model.eval()
        train_loss = float(np.mean(recent[-50:])) if recent else float("nan")
        for op in recipe.operators:
            acc, loss = answer_accuracy(model, data.heldout_tokens[op], data.heldout_targets[op])
            rows.append(dict(step=step, operator=op, train_loss=train_loss, heldout_loss=loss,
                             heldout_accuracy=acc, n_heldout=len(data.heldout_targets[op])))
        summary = ", ".join(f"{r['operator']} {r['heldout_accuracy']:.3f}" for r in rows[-len(recipe.operators):])
        log.info("step %d: held-out accuracy %s", step, summary)
        meta = {"source": "toy", "revision": f"step{step}", "step": step, "recipe": asdict(recipe)}
        save_hf_dir(model, tokenizer, out_dir / f"step{step}", meta)
        model.train()

    def on_step(step: int, loss: float) -> None:
        recent.append(loss)
        if step in recipe.checkpoint_steps:
            checkpoint(step)

    if 0 in recipe.checkpoint_steps:
        checkpoint(0)
    _train_loop(model, data, recipe.operators, recipe.steps, recipe.batch_size, optimizer, scheduler, gen, on_step)
    frame = pd.DataFrame(rows)
    write_parquet(frame, log_path)
    return frame


def finetune_lora(base_dir: Path, recipe: LoraRecipe, out_dir: Path) -> pd.DataFrame:
    """Train a peft LoRA adapter on ``base_dir`` (a toy checkpoint) and save it to ``out_dir`` (peft format).

    Returns held-out accuracy per operator before and after the fine-tune (columns ``stage, operator,
    heldout_accuracy``). The held-out split is the toy's own (same seed and fraction), so it was never trained on.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((base_dir / "circuitflow.json").read_text())
    toy = recipe_from_dict(ToyRecipe, meta["recipe"], f"{base_dir}/circuitflow.json")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    data = make_data(toy, tokenizer)
    rows = [dict(stage="base", operator=op, heldout_accuracy=answer_accuracy(model, data.heldout_tokens[op],
                                                                             data.heldout_targets[op])[0])
            for op in toy.operators]
    torch.manual_seed(recipe.seed)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=list(recipe.targets(toy.architecture)),
                        lora_dropout=0.0, bias="none", fan_in_fan_out=toy.architecture == "gpt2")
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    _train_loop(peft_model, data, recipe.operators, recipe.steps, recipe.batch_size, optimizer, None, gen,
                lambda step, loss: None)
    rows += [dict(stage="finetuned", operator=op, heldout_accuracy=answer_accuracy(
        peft_model, data.heldout_tokens[op], data.heldout_targets[op])[0]) for op in toy.operators]
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(tmp)
        (tmp / "circuitflow.json").write_text(json.dumps({"lora_recipe": asdict(recipe), "base": str(base_dir)},
                                                         indent=2))
    return pd.DataFrame(rows)
