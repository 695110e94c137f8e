"""Set-up shared by the workflow's scripts: the job's log, its provenance, its thread count, and the performance
settings — which are read from the config, never from the rule's ``params`` (a param change reruns the job, and a
batch size or a device does not change what a job computes)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from circuitflow.logs import log_to
from circuitflow.models.handle import read_handle
from circuitflow.provenance import provenance_record, register

# Config keys that change how fast a job runs, not its numbers (``dtype`` does change them: it is a param).
PERFORMANCE_KEYS = ("device", "device_map", "batch_size", "circuits.batch_size", "localization.batch_size")
# Params that are no config: the code hash (recorded on its own) and the scratch folder of a resumable sweep.
NOT_CONFIG_PARAMS = ("code", "partial")


@dataclass(frozen=True)
class Performance:
    """How a job runs: ``device``/``device_map`` of its model, batch sizes (``batch_size``: prompts per forward when
    evaluating; ``circuits_batch_size``, ``localization_batch_size``: prompt pairs per forward of those stages) and
    ``threads`` (CPU threads Snakemake gave the job)."""

    device: str
    device_map: str | None
    batch_size: int
    circuits_batch_size: int
    localization_batch_size: int
    threads: int = 1


def performance(config: dict, threads: int = 1) -> Performance:
    """The performance settings of a validated workflow config (defaults filled in)."""
    return Performance(config["device"], config["device_map"], config["batch_size"],
                       config["circuits"]["batch_size"], config["localization"]["batch_size"], threads)


def without_performance(config: dict) -> dict:
    """A copy of ``config`` without the :data:`PERFORMANCE_KEYS` (what may be a rule's param)."""
    config = copy.deepcopy(config)
    for key in PERFORMANCE_KEYS:
        *parents, leaf = key.split(".")
        section = config
        for parent in parents:
            section = section.get(parent, {})
        section.pop(leaf, None)
    return config


def set_torch_threads(threads: int) -> None:
    """Let torch use ``threads`` CPU threads (intra-op), the job's share of the cores."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def job_model_and_revision(snakemake) -> tuple[str | None, str | None]:
    """The job's ``model`` wildcard and the revision in that model's own handle (``models/{model}/model.json``)
    when the job reads it (its ``handle`` input); the revision is None otherwise (training, several checkpoints)."""
    model = dict(snakemake.wildcards.items()).get("model")
    handle = dict(snakemake.input.items()).get("handle")
    if model is None or not isinstance(handle, str) or Path(handle).parent.name != model:
        return model, None
    return model, read_handle(handle).revision  # a broken handle: HandleError, one line naming the file


@contextmanager
def snakemake_job(snakemake, torch_threads: bool = False) -> Iterator[logging.Logger]:
    """Run a workflow script's body: log to the job's log file (see :func:`circuitflow.logs.log_to`) and register
    its provenance (model, revision, its params but :data:`NOT_CONFIG_PARAMS`, ``code`` hash) for every table it
    writes. With ``torch_threads``, torch uses the job's ``threads``."""
    params = dict(snakemake.params.items())
    with log_to(snakemake.log[0]) as log:
        model, revision = job_model_and_revision(snakemake)
        if torch_threads:
            set_torch_threads(snakemake.threads)
        config = {key: value for key, value in params.items() if key not in NOT_CONFIG_PARAMS}
        register(provenance_record(model=model, revision=revision, config=config, code=params.get("code")))
        try:
            yield log
        finally:
            register(None)


def job_performance(snakemake) -> Performance:
    """The :class:`Performance` of a running Snakemake job (the workflow's validated config, the job's threads)."""
    return performance(snakemake.config, snakemake.threads)
