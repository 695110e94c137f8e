"""Job logs: a count clamped to a model's shape is said in the log, never silently."""

from __future__ import annotations

import logging

from circuitflow.logs import clamped


def test_a_count_beyond_the_model_is_clamped_and_said(caplog):
    log = logging.getLogger("circuitflow.test")
    with caplog.at_level(logging.WARNING):
        assert clamped(log, "localization.top_heads", 100, 32, "pythia", "heads") == 32
        assert clamped(log, "localization.top_heads", 6, 32, "pythia", "heads") == 6
    assert [r.getMessage() for r in caplog.records] == [
        "localization.top_heads=100: pythia has only 32 heads; using all of them"]
