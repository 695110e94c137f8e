"""Tables are read with errors that name the file: unreadable, missing, or without a column a consumer needs."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from circuitflow.tables import PROMPT_SET_COLUMNS, TableError, read_table


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "add.parquet"
    pd.DataFrame({"prompt": ["1+2="], "corrupt_prompt": ["3+2="], "answer_token": [7],
                  "corrupt_answer_token": [9]}).to_parquet(path)
    return path


def one_line(path, columns=()) -> str:
    with pytest.raises(TableError) as err:
        read_table(path, columns)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def test_a_good_table_is_read_whole(prompts):
    assert read_table(prompts, PROMPT_SET_COLUMNS)["answer_token"].tolist() == [7]


def test_a_missing_column_is_named(prompts):
    pd.read_parquet(prompts).drop(columns="corrupt_prompt").to_parquet(prompts)
    assert re.search(r"no column 'corrupt_prompt' .*delete it and rerun", one_line(prompts, PROMPT_SET_COLUMNS))


def test_a_truncated_table_is_named(prompts):
    prompts.write_bytes(prompts.read_bytes()[:100])
    assert "not a readable parquet table" in one_line(prompts)


def test_a_missing_table_is_named(tmp_path):
    assert "no such table" in one_line(tmp_path / "nothing.parquet")
