"""The HTML report embeds every figure under its stage with its caption, and fails loudly on an unknown figure."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import pytest

from circuitflow.report import FIGURE_KINDS, figure_kind, read_captions, write_report

ROOT = Path(__file__).resolve().parents[2]
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
                       "RU5ErkJggg==")


@pytest.mark.parametrize(("name", "section"), [
    ("accuracy.png", "Models and accuracy"), ("toy/training.png", "Models and accuracy"),
    ("toy/faithfulness_add.png", "Circuits (EAP / EAP-IG)"), ("toy/circuits/add/EAP-IG-inputs.png",
                                                             "Circuits (EAP / EAP-IG)"),
    ("toy/ie_map_div.png", "Localization (the paper's)"), ("toy/heuristic_maps_mul.png", "Heuristic neurons"),
    ("toy/checkpoint_heuristics.png", "Heuristic neurons"),
])
def test_figures_map_to_their_stage(name, section):
    assert figure_kind(name)[0] == section


def test_every_caption_exists_and_unknown_figures_are_refused():
    for _, _, caption in FIGURE_KINDS:
        assert (ROOT / "workflow" / "report" / f"{caption}.rst").exists()
    with pytest.raises(ValueError, match="no section for figure 'toy/new_plot.png'"):
        figure_kind("toy/new_plot.png")


def test_report_embeds_figures_tables_and_config(tmp_path):
    figures = tmp_path / "figures"
    (figures / "toy").mkdir(parents=True)
    for name in ("accuracy.png", "toy/probes_add.png"):
        (figures / name).write_bytes(PNG)
    out = tmp_path / "report.html"
    table = pd.DataFrame({"add": [0.99]}, index=pd.Index(["toy"], name="model"))
    write_report(out, [str(figures / "toy/probes_add.png"), str(figures / "accuracy.png")], figures,
                 read_captions(ROOT / "workflow" / "report"), {"Accuracy": table}, {"seed": 0})
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 2 and "toy/probes_add.png" in text
    assert "linear probe" in text.lower() and "0.990" in text and "seed: 0" in text
    assert text.index("Models and accuracy") < text.index("Localization")
