"""SLURM resources suggested from benchmark files: the largest measurement per rule times the margin."""

from __future__ import annotations

import yaml

from circuitflow.resources import measured_resources, set_resources_yaml

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path, seconds, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")


def test_runtime_and_memory_come_from_the_slowest_and_largest_job(tmp_path):
    bench(tmp_path / "ie_maps/toy_add.tsv", 100.0, 900.5)
    bench(tmp_path / "ie_maps/toy_mul.tsv", 310.0, 4000.0)
    bench(tmp_path / "report/all.tsv", 2.0, "-")  # memory not measured
    (tmp_path / "empty").mkdir()
    table = measured_resources(tmp_path, margin=2.0).set_index("rule")
    assert list(table.index) == ["ie_maps", "report"]
    assert table.loc["ie_maps", "jobs"] == 2 and table.loc["ie_maps", "runtime"] == 11  # ceil(2 × 310 s / 60)
    assert table.loc["ie_maps", "mem_mb"] == 8000 and table.loc["report", "mem_mb"] == 1000
    assert table.loc["report", "runtime"] == 1
    profile = yaml.safe_load(set_resources_yaml(table.reset_index()))
    assert profile == {"set-resources": {"ie_maps": {"runtime": 11, "mem_mb": 8000},
                                         "report": {"runtime": 1, "mem_mb": 1000}}}
