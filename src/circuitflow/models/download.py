"""Downloading hub models with ``huggingface_hub``, and checking the cache before any job when offline.

Resumable; honours ``HF_HOME``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``. Transient network failures (no connection
while online, timeouts, server errors, rate limits) are retried here with a growing wait; an error that would only
repeat (no such model or revision, a gated model, offline without the files) fails at once in one line. Only
safetensors weights are fetched: a revision without them (e.g. only a pickled ``pytorch_model.bin``) is refused.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
ATTEMPTS = 4
log = logging.getLogger(__name__)


class DownloadError(ValueError):
    """A model could not be fetched; the message is one line naming the model and what to do (a ``ValueError``, so
    a job reports it as one line: :func:`circuitflow.logs.log_to`)."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not when ``huggingface_hub`` was imported)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> str:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, by default ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def is_cached(repo_id: str, revision: str, cache_dir: str | None = None) -> bool:
    """True when the cache holds ``repo_id`` at ``revision`` (its config.json; no network call)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir or hub_cache(), revision=revision)
    return isinstance(found, str)


def offline_fix(repo_id: str, revision: str, cache_dir: str | None = None) -> str:
    """What is wrong, and what to do, for a hub model missing from the cache while offline."""
    return (f"{repo_id}@{revision} is not in the Hugging Face cache {cache_dir or hub_cache()} and HF_HUB_OFFLINE is "
            "set; download it once online (unset HF_HUB_OFFLINE), point HF_HOME at a cache that holds it, or use a "
            "'local' model")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _lasting(err: BaseException, repo_id: str, revision: str, cache_dir: str | None) -> DownloadError | None:
    """The one-line error for a failure that a retry would only repeat; None for a transient one."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, IncompleteSnapshotError, \
        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, GatedRepoError):
        return DownloadError(f"{repo_id}: a gated model: accept its licence at {constants.ENDPOINT}/{repo_id}, then "
                             "log in with that account (hf auth login, or set HF_TOKEN)")
    if isinstance(err, RepositoryNotFoundError):
        return DownloadError(f"{repo_id}: no such model on the hub (a private one needs HF_TOKEN); check the "
                             "model's repo_id")
    if isinstance(err, RevisionNotFoundError):
        return DownloadError(f"{repo_id}@{revision}: no such revision on the hub; use a branch, tag or commit of "
                             f"{repo_id} (see {constants.ENDPOINT}/{repo_id}/tree/main)")
    if isinstance(err, IncompleteSnapshotError) and hub_offline():
        return DownloadError(f"{repo_id}@{revision}: the cached snapshot {err.snapshot_path} lacks files (an "
                             "interrupted download); rerun once online (unset HF_HUB_OFFLINE) to complete it")
    if isinstance(err, LocalEntryNotFoundError):
        return DownloadError(offline_fix(repo_id, revision, cache_dir)) if hub_offline() else None
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status is not None and 400 <= status < 500 and status != 429:
        return DownloadError(f"{repo_id}@{revision}: the hub refused the download (HTTP {status}): "
                             f"{_first_line(err)}")
    if isinstance(err, OSError) and err.errno is not None:  # the local disk: full, read-only, no permission
        return DownloadError(f"{repo_id}@{revision}: cannot write the download: {_first_line(err)}")
    return None


def _repo_files(repo_id: str, revision: str, cache_dir: str | None) -> list[str]:
    """The files of ``repo_id`` at ``revision`` as the hub listed them at download time (``huggingface_hub`` keeps
    the listing in the cache), including those the patterns skipped; empty when no listing is cached."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [entry.path for entry in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)]
    except CachedRepoTreeNotFoundError:
        return []


def check_weights(snapshot: str, repo_id: str, revision: str, cache_dir: str | None = None) -> None:
    """A downloaded revision must hold safetensors weights: pickled ``*.bin`` weights are never fetched (loading one
    can run code), so a revision with only those is refused here, in one line, rather than failing in a later job."""
    if any(Path(snapshot).glob("*.safetensors")):
        return
    pickled = [name for name in _repo_files(repo_id, revision, cache_dir) if name.endswith(".bin")]
    found = f"has only pickled PyTorch weights ({', '.join(pickled)})" if pickled else "has no *.safetensors weights"
    raise DownloadError(f"{repo_id}@{revision}: {found}; the workflow loads safetensors only: pick a revision with "
                        "model.safetensors, or convert this one (from_pretrained + save_pretrained writes "
                        "safetensors) and use the folder as a 'local' model")


def download_snapshot(repo_id: str, revision: str = "main", cache_dir: str | None = None, attempts: int = ATTEMPTS,
                      wait: float = 10.0) -> str:
    """Download (or reuse from the cache) ``repo_id`` at ``revision``; return the local snapshot directory.

    Only the files a causal LM needs are fetched (config, weights in safetensors, tokenizer); a revision without
    safetensors weights is refused (:func:`check_weights`). Interrupted downloads resume on the next call;
    transient failures are retried up to ``attempts`` times, waiting ``wait`` seconds, then twice as long each time.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    network_errors = (OSError, *HfHubHTTPError.__bases__)  # the hub's HTTP client errors: timeouts, no connection
    for attempt in range(attempts):
        try:
            snapshot = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=PATTERNS)
        except network_errors as err:
            lasting = _lasting(err, repo_id, revision, cache_dir)
            if lasting is not None:
                raise lasting from None
            if attempt == attempts - 1:
                raise DownloadError(f"{repo_id}@{revision}: the hub could not be reached in {attempts} attempts "
                                    f"({_first_line(err)}); check the connection and rerun, or use a 'local' model"
                                    ) from None
            log.warning("%s@%s: %s; retrying in %.0f s", repo_id, revision, _first_line(err), wait * 2 ** attempt)
            time.sleep(wait * 2 ** attempt)
        else:
            check_weights(snapshot, repo_id, revision, cache_dir)
            return snapshot
    raise DownloadError(f"{repo_id}@{revision}: attempts={attempts}; use at least 1")
