"""Hub models offline are checked against the cache when the config is loaded; downloads retry only transient
failures. A fake Hugging Face cache in a temporary folder, never the network."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from circuitflow.config import load_workflow_config
from circuitflow.models.download import DownloadError, download_snapshot
from circuitflow.models.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
REPO = "EleutherAI/pythia-14m"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())


def fake_cache(hub: Path, refs: dict[str, str]) -> None:
    """A hub cache holding config.json of ``REPO`` at each ref name -> commit."""
    repo = hub / f"models--{REPO.replace('/', '--')}"
    for ref, commit in refs.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")


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
    fake_cache(hub, {"main": "a" * 40})  # main is there, the checkpoint is not
    with pytest.raises(ConfigError) as err:
        load_workflow_config(hub_config([1000]), SCHEMA)
    message = str(err.value)
    assert "\n" not in message
    assert re.match(rf"models.pythia: {REPO}@step1000 is not in the Hugging Face cache {re.escape(str(hub))} and "
                    "HF_HUB_OFFLINE is set; download it once online", message), message


def test_offline_a_cached_hub_model_passes(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_cache(hub, {"main": "a" * 40, "step1000": "b" * 40})
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
def calls(monkeypatch) -> Calls:
    made = Calls()
    made.errors = []

    def fake(repo_id, **kwargs):
        made.append(repo_id)
        if made.errors:
            raise made.errors.pop(0)
        return "/cache/snapshot"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return made


def test_transient_failures_are_retried(calls, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls.errors = [http_error(503), LocalEntryNotFoundError("connection lost")]
    assert download_snapshot(REPO, wait=0) == "/cache/snapshot" and len(calls) == 3
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
