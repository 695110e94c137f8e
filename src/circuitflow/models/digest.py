"""Content digests of the models the workflow analyses, with sanity checks on their files.

``results/models/{model}/digest.json`` holds the sha256 of each weight file (``*.safetensors``, ``*.bin``), config
and tokenizer file of the model's directory, of every checkpoint in ``checkpoints.json`` and of a LoRA model's
adapter. Every job that loads the model has it as an input, so changed weights rerun their dependents, while an
unchanged model gives the same bytes and reruns nothing.

While hashing, the files are checked: each safetensors file must parse (header, tensor sizes within the file), its
floating-point tensors must be finite, and every model directory needs a ``config.json``, a tokenizer and weights. A
problem is a :class:`ModelFileError`: one line naming the file, what is wrong and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from circuitflow.io import write_json
from circuitflow.models.handle import ModelHandle, read_handle, read_handles

WEIGHT_SUFFIXES = (".safetensors", ".bin")
CONFIG_FILES = ("config.json", "adapter_config.json")
# a tokenizer is one of these (a fast tokenizer, a sentencepiece model, a BPE or WordPiece vocabulary, tiktoken)
TOKENIZERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
TOKENIZER_FILES = (*TOKENIZERS, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")
# how to get a good copy of a broken file, by the handle's source (``adapter``: a LoRA model's adapter)
FIXES = {
    "toy": "retrain it: snakemake --forcerun train_toy",
    "lora": "check the adapter and its scaling, then merge again: snakemake --forcerun merge_lora",
    "hub": "delete the snapshot from the Hugging Face cache (hf cache delete) and rerun to download it again",
    "local": "replace it with a good copy (model.save_pretrained / tokenizer.save_pretrained)",
    "adapter": "replace the adapter with a good copy (or retrain it: snakemake --forcerun finetune_toy_lora)",
}


class ModelFileError(ValueError):
    """A broken or missing model file; the message is one line naming the file, what is wrong and the fix."""


def is_model_file(name: str) -> bool:
    """True for the files that make a model: weights (and their shard index), configs, tokenizer files."""
    return (name.endswith(WEIGHT_SUFFIXES) or name.endswith(".safetensors.index.json") or name.endswith(".tiktoken")
            or name in CONFIG_FILES or name in TOKENIZER_FILES)


def model_files(path: Path | str, nested: bool = False) -> list[Path]:
    """The model files of a directory (top level; with ``nested`` also of each subdirectory, as a toy's checkpoint
    folders), sorted; a file is its own list. Hidden entries (temporary folders of an atomic write) are skipped."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and is_model_file(p.name)]
    if nested:
        files += [f for p in entries if p.is_dir() for f in model_files(p)]
    return files


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _fail(path: Path, what: str, fix: str) -> ModelFileError:
    return ModelFileError(f"{path}: {what}; {fix}")


def check_safetensors_layout(path: Path, fix: str) -> None:
    """The file must hold its 8-byte header length, a JSON header of that length, and every tensor's bytes."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little") if size >= 8 else -1
        if length < 0 or 8 + length > size:
            raise _fail(path, f"truncated safetensors file ({size} bytes, shorter than its header)", fix)
        try:
            header = json.loads(stream.read(length))
            ends = {name: int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"}
        except (ValueError, TypeError, KeyError, IndexError):
            raise _fail(path, "corrupt safetensors header (not the JSON tensor table)", fix) from None
    name, end = max(ends.items(), key=lambda item: item[1], default=("", 0))
    if 8 + length + end > size:
        raise _fail(path, f"truncated safetensors file: tensor {name} ends at byte {8 + length + end} of a "
                          f"{size}-byte file", fix)


def check_finite(path: Path, fix: str) -> None:
    """Every floating-point tensor of a safetensors file must be finite (one tensor in memory at a time)."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as tensors:
            for name in tensors.keys():
                tensor = tensors.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise _fail(path, f"tensor {name} has {bad} non-finite value(s) (NaN or inf)", fix)
    except SafetensorError as err:
        raise _fail(path, f"unreadable safetensors file ({str(err).splitlines()[0]})", fix) from None


def check_model_dir(folder: Path, fix: str) -> None:
    """A model directory needs a parseable config.json, a tokenizer and at least one weight file."""
    config = folder / "config.json"
    if not config.is_file():
        raise _fail(config, "missing (every model directory needs its config.json)", fix)
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        raise _fail(config, "not valid JSON (truncated?)", fix) from None
    if not any((folder / name).is_file() for name in TOKENIZERS) and not any(folder.glob("*.tiktoken")):
        raise _fail(folder, f"no tokenizer (none of {', '.join(TOKENIZERS)})", fix)
    if not any(f.name.endswith(WEIGHT_SUFFIXES) for f in model_files(folder)):
        raise _fail(folder, "no weights (no *.safetensors or *.bin file)", fix)


def file_digests(files: list[Path], root: Path, fix: str) -> dict[str, str]:
    """``{path relative to root: sha256}`` of ``files``, each safetensors file checked first."""
    digests = {}
    for file in files:
        if file.name.endswith(".safetensors"):
            check_safetensors_layout(file, fix)
            check_finite(file, fix)
        digests[file.relative_to(root).as_posix()] = sha256(file)
    return digests


def directory_digest(handle: ModelHandle) -> dict[str, str]:
    """The checked file digests of one handle's model directory."""
    folder, fix = Path(handle.path), FIXES.get(handle.source, FIXES["local"])
    if not folder.is_dir():
        raise _fail(folder, f"the model directory of {handle.name}@{handle.revision} does not exist", fix)
    check_model_dir(folder, fix)
    return file_digests(model_files(folder), folder, fix)


def adapter_digest(adapter: Path) -> dict[str, str]:
    """The checked file digests of a LoRA adapter (a peft directory or a raw ``.safetensors`` file)."""
    files = model_files(adapter)
    if not files:
        raise _fail(adapter, "no adapter files (adapter_config.json + adapter_model.safetensors, or a raw "
                             ".safetensors file)", FIXES["adapter"])
    return file_digests(files, adapter if adapter.is_dir() else adapter.parent, FIXES["adapter"])


def model_digest(handle_file: Path | str, index_file: Path | str, adapter: Path | str | None = None) -> dict:
    """The digest record of a model: per revision (the final model and every checkpoint), the sha256 of each of
    its files; with ``adapter`` (a LoRA model's peft directory or raw file) those of the adapter; ``sha256``: one
    hash of all of them."""
    handle = read_handle(handle_file)
    record: dict = {"model": handle.name}
    if adapter is not None:  # first: a broken adapter is named as such, not as the merged model it broke
        record["adapter"] = adapter_digest(Path(adapter))
    revisions = record["revisions"] = {}
    for entry in (*read_handles(index_file), handle):
        if (entry.revision or "main") not in revisions:  # a toy's final model is its last checkpoint
            revisions[entry.revision or "main"] = directory_digest(entry)
    record["sha256"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def write_model_digest(handle_file: Path | str, index_file: Path | str, out: Path | str,
                       adapter: Path | str | None = None) -> dict:
    """Compute :func:`model_digest` and write it to ``out`` (stable bytes: sorted keys, no dates or paths)."""
    record = model_digest(handle_file, index_file, adapter)
    write_json(record, out)
    return record
