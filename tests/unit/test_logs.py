"""Job logs: a count clamped to a model's shape is said in the log, never silently; a user error is one line."""

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


def test_a_user_error_is_one_line_on_stderr_and_its_traceback_goes_to_the_log(tmp_path, capsys):
    import pytest

    from circuitflow.logs import log_to

    log = tmp_path / "job.log"
    with pytest.raises(SystemExit) as exit_info, log_to(log):
        raise ValueError("results/toy/prompts/add.parquet: no column 'corrupt_prompt'")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (f"error: results/toy/prompts/add.parquet: no column 'corrupt_prompt' "
                                       f"(log: {log})\n")
    assert "Traceback" in log.read_text() and "ValueError" in log.read_text()
