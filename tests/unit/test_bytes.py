"""Reproducible bytes: the same graph or figure saved twice, to different paths at different times, gives the same
file (no temporary names, no dates inside)."""

from __future__ import annotations

import time

import torch

from circuitflow.circuits.graph import Graph


def test_a_graph_saved_to_two_paths_has_the_same_bytes_and_loads_back(tmp_path):
    graph = Graph.empty(2, 4, 2, parallel=False, meta={"method": "EAP", "operator": "add"})
    graph.scores = torch.randn(graph.n_up, graph.n_down, generator=torch.Generator().manual_seed(0)) * graph.valid
    graph.select_topn(5)
    one, two = tmp_path / "one.pt", tmp_path / "elsewhere" / "two.pt"
    graph.save(one)
    graph.save(two)
    assert one.read_bytes() == two.read_bytes()
    assert b"archive/data.pkl" in one.read_bytes() and b".one.pt." not in one.read_bytes()  # no temp file name
    loaded = Graph.load(tmp_path / "one.pt")
    assert torch.equal(loaded.scores, graph.scores) and loaded.n_edges == 5 and loaded.meta == graph.meta


def test_a_figure_saved_twice_has_the_same_pdf_and_png_bytes(tmp_path):
    from circuitflow import plots

    def draw():
        fig, ax = plots.plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2], label="add")
        ax.set(title="accuracy × checkpoints", xlabel="step")
        ax.legend()
        return fig

    plots.save_figure(draw(), tmp_path / "a.png", tmp_path / "a.pdf")
    time.sleep(1.1)  # a PDF's CreationDate has a one-second resolution
    plots.save_figure(draw(), tmp_path / "b.png", tmp_path / "b.pdf")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert b"CreationDate" not in (tmp_path / "a.pdf").read_bytes()
