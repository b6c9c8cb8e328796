"""Job metadata (Slurm, Kubernetes, torchrun): read from the environment the schedulers set,
recorded in the run, shown by summary and reports, and bounded on ``greentrack_run_info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import greentrack
from greentrack.common.jobinfo import MAX_VALUE, describe, job_metadata, merge_jobs
from greentrack.reports.summary import format_summary
from greentrack.store import StoreReader, store_paths
from tests.helpers import FAST, families
from tests.servers import http_get, promtool

SLURM_ARRAY = {"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1",
               "SLURM_JOB_NODELIST": "gpu[001-064]", "SLURM_JOB_NUM_NODES": "64",
               "SLURM_JOB_NAME": "llm-sweep", "SLURM_JOB_PARTITION": "h100"}
K8S = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOSTNAME": "train-7f9c-worker-0",
       "POD_NAMESPACE": "ml-team"}
ELASTIC = {"TORCHELASTIC_RUN_ID": "rdzv-abc", "TORCHELASTIC_RESTART_COUNT": "2",
           "TORCHELASTIC_MAX_RESTARTS": "3", "GROUP_RANK": "5", "GROUP_WORLD_SIZE": "8"}


def test_each_scheduler_from_its_variables() -> None:
    assert job_metadata({}) == {}
    assert job_metadata(SLURM_ARRAY) == {"slurm": {
        "job_id": "4243", "job_name": "llm-sweep", "array_job_id": "4242", "array_task_id": "1",
        "node_list": "gpu[001-064]", "num_nodes": "64", "partition": "h100"}}
    # the pod's name is HOSTNAME on Kubernetes; POD_NAME (downward API) wins where it is set
    assert job_metadata(K8S) == {"kubernetes": {"pod": "train-7f9c-worker-0", "namespace": "ml-team"}}
    assert job_metadata({**K8S, "POD_NAME": "p-1"})["kubernetes"]["pod"] == "p-1"
    assert job_metadata({"HOSTNAME": "laptop"}) == {}  # not on Kubernetes: the host is no pod
    assert job_metadata(ELASTIC) == {"torchelastic": {
        "run_id": "rdzv-abc", "restart_count": "2", "max_restarts": "3", "group_rank": "5",
        "group_world_size": "8"}}
    assert job_metadata({"TORCHELASTIC_RUN_ID": "none"}) == {}  # torchrun's "no id"


def test_values_are_printable_and_bounded() -> None:
    long = "n[" + ",".join(f"{i:04d}" for i in range(400)) + "]"
    job = job_metadata({"SLURM_JOB_ID": "77\x1b[2J", "SLURM_JOB_NODELIST": long,
                        "SLURM_JOB_NAME": "  "})
    assert job["slurm"]["job_id"] == "77?[2J"
    assert len(job["slurm"]["node_list"]) == MAX_VALUE and job["slurm"]["node_list"].endswith("...")
    assert "job_name" not in job["slurm"]
    # a damaged store's job meta is skipped, never shown
    assert merge_jobs([{"slurm": {"job_id": 7}}, "x", {"slurm": {"job_id": "8"}}, None]) == \
        {"slurm": {"job_id": "8"}}


def test_recorded_in_the_run_and_shown(tmp_path: Path, no_host_env: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SLURM_ARRAY, **ELASTIC}.items():
        monkeypatch.setenv(name, value)
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        with t.step():
            pass
    (store,) = store_paths(tmp_path / "run")
    reader = StoreReader(store)
    assert reader.meta["job"] == job_metadata({**SLURM_ARRAY, **ELASTIC})
    reader.close()
    s = greentrack.summarize(tmp_path / "run")
    assert s["job"]["slurm"]["array_task_id"] == "1"
    assert s["run_id"] == "rdzv-abc"  # the launcher's id names the run, as before
    text = format_summary(s)
    assert ("job        slurm job 4243 (array 4242 task 1) on gpu[001-064]; torchrun run "
            "rdzv-abc, restart 2") in text
    from greentrack.reports import report_document
    doc = report_document(tmp_path / "run", {})
    assert doc["run"]["job"] == s["job"]
    from greentrack.reports.content import blocks
    assert ("p", f"Job: {describe(s['job'])}.") in blocks(doc)


def test_prometheus_run_info_carries_bounded_job_labels(tmp_path: Path, no_host_env: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SLURM_ARRAY, **K8S, **ELASTIC}.items():
        monkeypatch.setenv(name, value)
    with greentrack.Tracker(tmp_path / "run", prometheus_port=0, **FAST) as t:
        text = http_get(t.sinks[0].url).decode()
    (info,) = families(text)["greentrack_run_info"].samples
    assert {k: info.labels[k] for k in ("slurm_job_id", "slurm_array_task_id", "k8s_namespace",
                                         "k8s_pod", "elastic_run_id", "elastic_restart_count")} == {
        "slurm_job_id": "4243", "slurm_array_task_id": "1", "k8s_namespace": "ml-team",
        "k8s_pod": "train-7f9c-worker-0", "elastic_run_id": "rdzv-abc",
        "elastic_restart_count": "2"}
    assert "gpu[001-064]" not in text  # the node list is never a label
    other = {k for fam in families(text).values() for x in fam.samples for k in x.labels}
    assert "slurm_job_id" in other and not any("node" in k for k in other)
    check = promtool("check", "metrics", stdin=text)
    assert check.returncode == 0, check


def test_summary_json_of_a_run_without_scheduler(tmp_path: Path, no_host_env: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST):
        pass
    s = greentrack.summarize(tmp_path / "run")
    assert s["job"] == {} and "job " not in format_summary(s)
    json.dumps(s)
