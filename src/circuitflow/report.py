"""The report's own items: the headline tables and the run's provenance as small HTML pages, which
``snakemake --report`` shows next to the figures (the figures, captions, runtimes and rule code are Snakemake's)."""

from __future__ import annotations

import html
import platform
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from circuitflow.io import atomic_path
from circuitflow.provenance import read_provenance

# output name of the report rule -> the table's title (the headline tables, in the report's order)
TABLE_TITLES = {
    "accuracy": "Accuracy on all legal prompts",
    "areas": "Circuit CPR per level (area under faithfulness; higher is better)",
    "paper_circuits": "The paper's circuits: median faithfulness by neurons per layer",
    "heuristics": "Heuristic neurons and prompt knockout",
    "features": "Feature circuits: dictionaries, attribution graphs, heuristics as features",
}
STYLE = ("body{font-family:sans-serif;margin:1em;color:#111;background:#fff}table{border-collapse:collapse;"
         "font-size:90%;margin-bottom:1.5em}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}"
         "tr:nth-child(even){background:#f3f3f3}pre{background:#f6f6f6;padding:.5em;font-size:85%}")


def summary_tables(accuracy: Sequence[str], areas: Sequence[str], paper_circuits: Sequence[str],
                   heuristics: Sequence[str], prompt_knockouts: Sequence[str], *, feature_quality: Sequence[str] = (),
                   feature_scores: Sequence[str] = (), feature_ablation: Sequence[str] = (),
                   feature_comparison: Sequence[str] = ()) -> dict[str, pd.DataFrame | None]:
    """Headline numbers from the workflow's tables (paths as the workflow writes them), keyed like
    :data:`TABLE_TITLES`; None where the stage ran for no model."""
    out: dict[str, pd.DataFrame | None] = dict.fromkeys(TABLE_TITLES)
    if accuracy:
        table = pd.concat([pd.read_parquet(p) for p in accuracy])
        out["accuracy"] = table.pivot(index="model", columns="operator", values="accuracy")
    if areas:
        frames = []
        for path in areas:  # results/{model}/circuits/{op}/areas.parquet
            frame = pd.read_parquet(path)
            frames.append(frame.assign(model=Path(path).parts[-4], operator=Path(path).parts[-2]))
        out["areas"] = pd.concat(frames).pivot_table(index=["model", "operator", "level"], columns="method",
                                                     values="cpr", sort=False)  # levels in the config's order
    if paper_circuits:
        table = pd.concat([pd.read_parquet(p) for p in paper_circuits])
        out["paper_circuits"] = table[table["circuit"] == "top"].pivot_table(
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
        out["heuristics"] = pd.DataFrame(rows).set_index(["model", "operator"])
    if feature_quality and feature_scores:
        out["features"] = feature_summary(feature_quality, feature_scores, feature_ablation, feature_comparison)
    return out


def feature_summary(quality: Sequence[str], scores: Sequence[str], ablation: Sequence[str],
                    comparison: Sequence[str]) -> pd.DataFrame:
    """Per model and operator: the largest normalized MSE of the model's dictionaries, accuracy with all of them
    spliced in (and without), the attribution graphs' mean replacement and completeness scores and the share of
    attention features' inputs that act through their pattern (LEAP's Q + K edges), the mean Pearson r
    of attribution vs exact ablation (attention and norms frozen / live), and — where the heuristics stage ran —
    the share of important transcoder features and of classified neurons that implement a heuristic."""
    def read(paths: Sequence[str]) -> pd.DataFrame:
        return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)

    keys = ["model", "operator"]
    q = read(quality)
    nmse = q[q["operator"] == "all"].groupby("model")["nmse"].max().rename("nmse_max")
    spliced = q[q["dictionary"] == "all"].set_index(keys)[["accuracy", "accuracy_original"]].rename(
        columns={"accuracy": "accuracy_spliced"})
    graphs = read(scores)
    pattern = graphs.get("q_share", float("nan")) + graphs.get("k_share", float("nan"))  # LEAP's Q + K edges
    graphs = graphs.assign(pattern_share=pattern).groupby(keys)[
        ["replacement_score", "completeness_score", "pattern_share"]].mean()
    table = spliced.join(nmse, on="model").join(graphs)
    if ablation:
        pearson = read(ablation).drop_duplicates(["model", "operator", "graph"]).groupby(keys)
        table = table.join(pearson[["pearson_frozen", "pearson"]].mean())
    if comparison:
        shares = read(comparison).query("site == 'mlp'").set_index(keys)[["share_features", "share_neurons"]]
        table = table.join(shares)
    return table


def cpr_label(areas: Path | str, method: str | None = None, level: str = "edge") -> str:
    """A circuits figure's headline number for the report's list: ``method``'s CPR at ``level`` in an
    ``areas.parquet`` table, or the best method's CPR and name when ``method`` is None; "—" when the table has no
    curve of that level (``circuits.levels``) for the method."""
    table = pd.read_parquet(areas).query("level == @level").set_index("method")["cpr"]
    if method is not None:
        return f"{table[method]:.3f}" if method in table else "—"
    return f"{table.max():.3f} ({table.idxmax()})" if len(table) else "—"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h2>{html.escape(title)}</h2>{body}</body></html>")


def table_page(title: str, table: pd.DataFrame | None) -> str:
    """A headline table as a small HTML page (floats to 3 decimals, "—" where a cell has no value); a sentence when
    the stage ran for no model."""
    if table is None:
        return _page(title, "<p>No model ran this stage (see the config's <code>models:</code> list of the stage).</p>")
    return _page(title, table.to_html(float_format=lambda v: f"{v:.3f}", border=0, na_rep="—"))


def provenance_frame(tables: Sequence[str]) -> pd.DataFrame:
    """One row per table (e.g. each model's accuracy table): the model, revision, git commit, whether the checkout
    had changes, the code and config hashes and the package versions of the job that wrote it."""
    rows = []
    for path in tables:
        record = read_provenance(path)
        if record is None:
            raise ValueError(f"report: {path} has no provenance metadata; rerun the job that writes it")
        git = record.get("git") or {}
        rows.append(dict(model=record["model"], revision=record["revision"], commit=git.get("commit"),
                         dirty=git.get("dirty"), code=record["code"], config_hash=record["config_hash"],
                         **record["packages"]))
    return pd.DataFrame(rows).set_index("model")


def device_description(setting: str) -> str:
    """The device ``setting`` and what it resolves to on this machine, with the GPU's name when it is one."""
    import torch

    from circuitflow.models.load import resolve_device

    device = resolve_device(setting)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor()
    return f"{setting} → {device} ({name or platform.machine()})"


def provenance_page(tables: Sequence[str], config: dict, device: str) -> str:
    """The provenance item: :func:`provenance_frame` of ``tables``, the ``device`` (:func:`device_description`) and
    the config (without the performance settings). Runtimes and rule code are in Snakemake's own report."""
    frame = provenance_frame(tables).T
    body = (f"<p>Device (setting → on the machine that wrote this page): <code>{html.escape(device)}</code>. "
            "Per-job runtimes: <i>Statistics</i>; each rule's code, inputs and software: <i>Workflow</i>, click a "
            "rule.</p><h3>The jobs that evaluated each model</h3>" + frame.to_html(border=0, na_rep="—")
            + "<h3>Config</h3><pre>" + html.escape(yaml.safe_dump(config, sort_keys=False)) + "</pre>")
    return _page("Provenance", body)


def write_page(path: Path | str, document: str) -> None:
    """Write an HTML page atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(document)
