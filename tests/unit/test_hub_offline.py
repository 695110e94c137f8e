"""Hub models offline are checked against the cache when the config is loaded; downloads resolve revisions to
commits, retry only transient failures and refuse what cannot work (a missing revision, a gated model, weights only
as pickled ``.bin``) in one line. A fake Hugging Face cache in a temporary folder and a fake hub API, never the
network."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, \
    RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import filter_repo_objects

from circuitflow.config import load_workflow_config
from circuitflow.models.download import PATTERNS, DownloadError, download_snapshot
from circuitflow.models.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
REPO = "EleutherAI/pythia-14m"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())
LFS = (".safetensors", ".bin")  # stored with git LFS on the hub: blobs named by sha256, others by git's sha1
MODEL = {"config.json": b"{}", "tokenizer.json": b"{}", "model.safetensors": b"weights"}


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree_entry(name: str, data: bytes) -> dict:
    """One file of a cached tree listing (``trees/<commit>.json``), as the hub's ``/tree`` endpoint describes it."""
    entry = {"size": len(data), "blob_id": _git_sha1(data)}
    if name.endswith(LFS):
        entry.update(lfs_sha256=hashlib.sha256(data).hexdigest(), lfs_size=len(data))
    return entry


def cache_repo(hub: Path, repo_id: str, revisions: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """Put ``revisions`` (ref -> {file name: bytes}) of ``repo_id`` into the hub cache ``hub`` as ``snapshot_download``
    with the workflow's patterns leaves them: ``blobs/`` by content hash, ``snapshots/<commit>/`` of relative links
    to them (only the files the patterns fetch), ``refs/<ref>`` naming the commit and ``trees/<commit>.json`` listing
    every file of the commit. Equal files make equal commits. Returns ref -> commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commits = {}
    for ref, files in revisions.items():
        commit = commits[ref] = hashlib.sha1(json.dumps({n: _git_sha1(d) for n, d in sorted(files.items())})
                                             .encode()).hexdigest()
        listing = {name: _tree_entry(name, data) for name, data in files.items()}
        snapshot = repo / "snapshots" / commit
        for name in filter_repo_objects(files, allow_patterns=PATTERNS):
            entry = listing[name]
            blob = repo / "blobs" / entry.get("lfs_sha256", entry["blob_id"])
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(files[name])
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            if not (snapshot / name).is_symlink():
                (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
        (repo / "trees").mkdir(parents=True, exist_ok=True)
        (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commits


def hub_config(steps: list[int]) -> dict:
    config = copy.deepcopy(DEFAULT)
    config["models"]["pythia"] = {"source": "hub", "repo_id": REPO, "steps": steps}
    return config


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_a_hub_model_missing_from_the_cache_is_one_line(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo(hub, REPO, {"main": MODEL})  # main is there, the checkpoint is not
    with pytest.raises(ConfigError) as err:
        load_workflow_config(hub_config([1000]), SCHEMA)
    message = str(err.value)
    assert "\n" not in message
    assert re.match(rf"models.pythia: {REPO}@step1000 is not in the Hugging Face cache {re.escape(str(hub))} and "
                    "HF_HUB_OFFLINE is set; download it once online", message), message


def test_offline_a_cached_hub_model_passes(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo(hub, REPO, {"main": MODEL, "step1000": {**MODEL, "model.safetensors": b"step 1000"}})
    _, specs = load_workflow_config(hub_config([1000]), SCHEMA)
    assert specs["pythia"].checkpoints == ("step1000",)


def test_online_the_config_looks_nothing_up(hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: pytest.fail("looked up"))
    assert "pythia" in load_workflow_config(hub_config([]), SCHEMA)[1]


def http_error(status: int) -> HfHubHTTPError:
    client = sys.modules[HfHubHTTPError.__bases__[0].__module__]  # the HTTP client the hub uses (httpx or a fork)
    response = client.Response(status, request=client.Request("GET", "https://huggingface.co/api/models/x"))
    return HfHubHTTPError(f"{status} Server Error", response=response)


class Calls(list):
    """The repo ids a fake ``snapshot_download`` was called with; it raises ``errors`` in turn, then succeeds."""

    errors: list


@pytest.fixture
def calls(monkeypatch, tmp_path) -> Calls:
    made = Calls()
    made.errors = []
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot/model.safetensors").write_bytes(b"weights")

    def fake(repo_id, **kwargs):
        made.append(repo_id)
        if made.errors:
            raise made.errors.pop(0)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return made


def test_transient_failures_are_retried(calls, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls.errors = [http_error(503), LocalEntryNotFoundError("connection lost")]
    assert download_snapshot(REPO, wait=0).endswith("/snapshot") and len(calls) == 3
    calls.errors = [http_error(503)] * 4
    with pytest.raises(DownloadError, match=rf"^{REPO}@main: the hub could not be reached in 2 attempts \(503"):
        download_snapshot(REPO, attempts=2, wait=0)


@pytest.mark.parametrize(("error", "offline", "pattern"), [
    (lambda: RepositoryNotFoundError("404", response=http_error(404).response), False, "no such model on the hub"),
    (lambda: http_error(403), False, r"refused the download \(HTTP 403\)"),
    (lambda: LocalEntryNotFoundError("offline"), True, "is not in the Hugging Face cache"),
])
def test_lasting_failures_are_not_retried(calls, monkeypatch, error, offline, pattern):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls.errors = [error()]
    with pytest.raises(DownloadError, match=pattern) as err:
        download_snapshot(REPO, wait=60)
    assert len(calls) == 1 and "\n" not in str(err.value)


@pytest.fixture
def online(monkeypatch):
    """Online as far as ``huggingface_hub`` knows (the hub API itself is faked by each test)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def offline(monkeypatch):
    """``HF_HUB_OFFLINE=1`` as a job sees it (set before ``huggingface_hub`` is imported): every request is refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def hub_refuses(monkeypatch, error: Exception) -> None:
    """The hub API answers every repo lookup of ``snapshot_download`` with ``error``."""
    def refuse(self, repo_id, **kwargs):
        raise error

    monkeypatch.setattr(HfApi, "repo_info", refuse)


def test_offline_revisions_resolve_to_their_cached_commits(hub, offline):
    step = {**MODEL, "model.safetensors": b"step 1"}
    commits = cache_repo(hub, REPO, {"main": MODEL, "step1": step, "v1": MODEL})
    assert commits["main"] == commits["v1"] != commits["step1"]
    for ref in ("main", "step1", commits["step1"]):
        snapshot = Path(download_snapshot(REPO, ref, wait=60))
        assert snapshot == hub / f"models--{REPO.replace('/', '--')}/snapshots" / commits.get(ref, ref)
        assert (snapshot / "model.safetensors").read_bytes() == (step if "main" != ref else MODEL)["model.safetensors"]


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_a_missing_revision_is_one_line_naming_it(hub, monkeypatch, request, mode):
    request.getfixturevalue(mode)
    cache_repo(hub, REPO, {"main": MODEL})
    if mode == "online":  # offline, huggingface_hub's own client refuses every request (no network either way)
        hub_refuses(monkeypatch, RevisionNotFoundError("404 Revision Not Found", response=http_error(404).response))
    with pytest.raises(DownloadError) as err:
        download_snapshot(REPO, "step9", wait=60)
    expected = (f"{REPO}@step9 is not in the Hugging Face cache {hub} and HF_HUB_OFFLINE is set" if mode == "offline"
                else f"{REPO}@step9: no such revision on the hub; use a branch, tag or commit of {REPO} "
                f"(see https://huggingface.co/{REPO}/tree/main)")
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), err.value


def test_a_gated_model_says_to_accept_its_licence_and_log_in(hub, monkeypatch, online):
    gated = GatedRepoError(f"403 Cannot access gated repo {REPO}\nAccess is restricted", response=http_error(403)
                           .response)
    hub_refuses(monkeypatch, gated)
    with pytest.raises(DownloadError) as err:
        download_snapshot(REPO, "main", wait=60)
    assert str(err.value) == (f"{REPO}: a gated model: accept its licence at https://huggingface.co/{REPO}, then log "
                              "in with that account (hf auth login, or set HF_TOKEN)")


def test_a_missing_model_is_not_called_gated(hub, monkeypatch, online):
    hub_refuses(monkeypatch, RepositoryNotFoundError("404 Repository Not Found", response=http_error(404).response))
    with pytest.raises(DownloadError, match=rf"^{REPO}: no such model on the hub \(a private one needs HF_TOKEN\)"):
        download_snapshot(REPO, "main", wait=60)


def test_a_revision_with_only_pickled_weights_is_refused(hub, offline):
    pickled = {"config.json": b"{}", "tokenizer.json": b"{}", "pytorch_model.bin": b"pickle"}
    commits = cache_repo(hub, REPO, {"step3": pickled})
    snapshot = hub / f"models--{REPO.replace('/', '--')}/snapshots" / commits["step3"]
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "tokenizer.json"]  # .bin never fetched
    with pytest.raises(DownloadError) as err:
        download_snapshot(REPO, "step3", wait=60)
    assert str(err.value) == (f"{REPO}@step3: has only pickled PyTorch weights (pytorch_model.bin); the workflow "
                              "loads safetensors only: pick a revision with model.safetensors, or convert this one "
                              "(from_pretrained + save_pretrained writes safetensors) and use the folder as a "
                              "'local' model")
    (hub / f"models--{REPO.replace('/', '--')}/trees" / f"{commits['step3']}.json").unlink()  # no listing cached
    huggingface_hub._tree_cache._IN_MEMORY_TREE_CACHE.clear()
    with pytest.raises(DownloadError, match=rf"^{REPO}@step3: has no \*\.safetensors weights; "):
        download_snapshot(REPO, "step3", wait=60)


def test_offline_an_interrupted_download_is_named_as_such(hub, offline):
    commits = cache_repo(hub, REPO, {"main": MODEL})
    snapshot = hub / f"models--{REPO.replace('/', '--')}/snapshots" / commits["main"]
    (snapshot / "tokenizer.json").unlink()
    with pytest.raises(DownloadError) as err:
        download_snapshot(REPO, "main", wait=60)
    assert str(err.value) == (f"{REPO}@main: the cached snapshot {snapshot} lacks files (an interrupted download); "
                              "rerun once online (unset HF_HUB_OFFLINE) to complete it")
