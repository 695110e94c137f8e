"""The run's HTML report: every figure (embedded, so the file travels alone) with its caption, grouped by stage, the
headline numbers as small tables, and the config that produced them."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from circuitflow import __version__
from circuitflow.io import atomic_path

# figure file name (relative to the figures folder, without .png) -> (section, caption file in workflow/report/)
FIGURE_KINDS: tuple[tuple[str, str, str], ...] = (
    (r"accuracy", "Models and accuracy", "accuracy"),
    (r"[^/]+/training", "Models and accuracy", "training"),
    (r"[^/]+/checkpoint_accuracy", "Models and accuracy", "checkpoint_accuracy"),
    (r"[^/]+/faithfulness_\w+", "Circuits (EAP / EAP-IG)", "faithfulness"),
    (r"[^/]+/circuits/\w+/[\w-]+", "Circuits (EAP / EAP-IG)", "circuit"),
    (r"[^/]+/ie_map_\w+", "Localization (the paper's)", "ie_map"),
    (r"[^/]+/neurons_\w+", "Localization (the paper's)", "neurons"),
    (r"[^/]+/probes_\w+", "Localization (the paper's)", "probes"),
    (r"[^/]+/attention_\w+", "Localization (the paper's)", "attention"),
    (r"[^/]+/paper_faithfulness", "Localization (the paper's)", "paper_faithfulness"),
    (r"[^/]+/checkpoint_ie", "Localization (the paper's)", "checkpoint_ie"),
    (r"[^/]+/heuristics_\w+", "Heuristic neurons", "heuristics"),
    (r"[^/]+/heuristic_maps_\w+", "Heuristic neurons", "heuristic_maps"),
    (r"[^/]+/checkpoint_heuristics", "Heuristic neurons", "checkpoint_heuristics"),
)
SECTIONS = tuple(dict.fromkeys(section for _, section, _ in FIGURE_KINDS))


def figure_kind(relative: str) -> tuple[str, str]:
    """(section, caption name) of a figure path relative to the figures folder, e.g. ``toy/ie_map_add.png``."""
    stem = relative.removesuffix(".png")
    for pattern, section, caption in FIGURE_KINDS:
        if re.fullmatch(pattern, stem):
            return section, caption
    raise ValueError(f"report: no section for figure {relative!r}; add it to circuitflow.report.FIGURE_KINDS")


def summary_tables(accuracy: Sequence[str], areas: Sequence[str], paper_circuits: Sequence[str],
                   heuristics: Sequence[str], prompt_knockouts: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Headline numbers from the workflow's tables (paths as the workflow writes them; any list may be empty)."""
    out = {}
    if accuracy:
        table = pd.concat([pd.read_parquet(p) for p in accuracy])
        out["Accuracy on all legal prompts"] = table.pivot(index="model", columns="operator", values="accuracy")
    if areas:
        frames = []
        for path in areas:  # results/{model}/circuits/{op}/areas.parquet
            frame = pd.read_parquet(path)
            frames.append(frame.assign(model=Path(path).parts[-4], operator=Path(path).parts[-2]))
        table = pd.concat(frames)
        out["Circuit CPR (area under faithfulness; higher is better)"] = table.pivot_table(
            index=["model", "operator"], columns="method", values="cpr")
    if paper_circuits:
        table = pd.concat([pd.read_parquet(p) for p in paper_circuits])
        top = table[table["circuit"] == "top"]
        out["The paper's circuits: median faithfulness by neurons per layer"] = top.pivot_table(
            index=["model", "operator"], columns="k", values="faithfulness_median")
    if heuristics and prompt_knockouts:
        rows = []
        for table_path, knockout_path in zip(heuristics, prompt_knockouts):
            table, knockout = pd.read_parquet(table_path), pd.read_parquet(knockout_path)
            last = knockout.sort_values("neurons_per_layer").iloc[-1]
            rows.append(dict(model=table["model"].iloc[0], operator=table["operator"].iloc[0],
                             classified=len(table.drop_duplicates(["layer", "neuron"])),
                             matched=len(table[table["matched"]].drop_duplicates(["layer", "neuron"])),
                             knockout_neurons_per_layer=int(last["neurons_per_layer"]),
                             accuracy_after_knockout=last["accuracy"], accuracy_random=last["accuracy_random"]))
        out["Heuristic neurons and prompt knockout"] = pd.DataFrame(rows).set_index(["model", "operator"])
    return out


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def read_captions(folder: Path | str) -> dict[str, str]:
    """``{caption name: text}`` of the ``*.rst`` caption files in ``folder`` (workflow/report). The report rule takes
    them as params, so editing a caption reruns the report and moving the checkout does not."""
    return {path.stem: path.read_text().strip() for path in sorted(Path(folder).glob("*.rst"))}


def write_report(path: Path | str, figures: Sequence[str], figures_dir: Path | str, captions: dict[str, str],
                 tables: dict[str, pd.DataFrame], config: dict) -> None:
    """Write the self-contained HTML report to ``path`` (atomically); ``captions`` from :func:`read_captions`."""
    figures_dir = Path(figures_dir)
    by_section: dict[str, list[tuple[str, str]]] = {section: [] for section in SECTIONS}
    for figure in sorted(figures):
        relative = Path(figure).relative_to(figures_dir).as_posix()
        section, caption = figure_kind(relative)
        by_section[section].append((figure, captions[caption]))
    parts = [f"<h1>circuitflow report</h1><p>circuitflow {__version__}; every number and figure below was produced "
             "by this run of the workflow (tables under <code>results/</code>, see README &ldquo;Outputs&rdquo;).</p>",
             "<h2>Headline numbers</h2>"]
    for title, table in tables.items():
        parts.append(f"<h3>{html.escape(title)}</h3>" + table.to_html(float_format=lambda v: f"{v:.3f}", border=0))
    for section, entries in by_section.items():
        if not entries:
            continue
        parts.append(f"<h2>{html.escape(section)}</h2>")
        for figure, caption in entries:
            name = Path(figure).relative_to(figures_dir).as_posix()
            parts.append(f'<figure><img src="{_image(Path(figure))}" alt="{html.escape(name)}">'
                         f"<figcaption><b>{html.escape(name)}</b>: {html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Config</h2><pre>" + html.escape(yaml.safe_dump(config, sort_keys=False)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}img{max-width:100%}"
             "figure{margin:1.5em 0}table{border-collapse:collapse;font-size:90%}td,th{padding:2px 8px;"
             "text-align:right}tr:nth-child(even){background:#f3f3f3}")
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>circuitflow report</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text(document)
