"""Downloading hub models with ``huggingface_hub``.

Resumable; honours ``HF_HOME``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations


class DownloadError(RuntimeError):
    """A model could not be fetched; the message is one line naming the model and what to do."""


def download_snapshot(repo_id: str, revision: str = "main", cache_dir: str | None = None) -> str:
    """Download (or reuse from the cache) ``repo_id`` at ``revision``; return the local snapshot directory.

    Only the files a causal LM needs are fetched (config, weights in safetensors, tokenizer). Interrupted downloads
    resume on the next call.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, \
        RevisionNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such model on the hub (or it is gated: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id}: revision {revision!r} does not exist on the hub") from None
    except LocalEntryNotFoundError:
        raise DownloadError(f"{repo_id}@{revision}: the hub cannot be reached and the model is not in the cache "
                            "(HF_HOME); download it on a machine with internet or point a 'local' model at it"
                            ) from None
    except (HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(f"{repo_id}@{revision}: download failed: {first}") from None
