"""Per-job logging for workflow scripts: everything a job prints goes to its Snakemake ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def log_to(path: Path | str) -> Iterator[logging.Logger]:
    """Send stdout, stderr and ``logging`` (INFO) to ``path`` for the duration of the block.

    An exception is written to the log as a traceback and re-raised, so Snakemake marks the job failed and points
    at the log; a :class:`ValueError` carries a user-facing message: it is echoed as one line on the real stderr and
    the job exits with status 1 without a traceback there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    real_stderr = sys.stderr
    with open(path, "w", buffering=1) as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        root = logging.getLogger()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logger = logging.getLogger("circuitflow.job")
        try:
            yield logger
        except ValueError as err:  # a user-facing message: one line, no traceback (that is in the log)
            logger.exception("job failed")
            print(f"error: {err} (log: {path})", file=real_stderr)
            raise SystemExit(1) from None
        except BaseException:
            logger.exception("job failed")
            raise
        finally:
            root.removeHandler(handler)


def clamped(log: logging.Logger, field: str, value: int, limit: int, model: str, what: str) -> int:
    """``min(value, limit)``, saying so in the job's log when a config count exceeds what the model has (toy models
    are checked before any job; a hub, local or LoRA model's shape is known only once it is loaded)."""
    if value > limit:
        log.warning("%s=%d: %s has only %d %s; using all of them", field, value, model, limit, what)
    return min(value, limit)
