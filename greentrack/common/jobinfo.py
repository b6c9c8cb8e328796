"""What the scheduler and launcher call this job: Slurm, Kubernetes, torchrun (elastic).

Recorded in each store's meta (``job``), merged by :attr:`greentrack.run.Run.job`, shown by
``greentrack summary`` and every report, and, bounded, on the ``greentrack_run_info`` metric
(:data:`PROMETHEUS_LABELS`). Only what the environment says is read: no call to ``scontrol`` or
the Kubernetes API.

Sources:

* Slurm sets ``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID`` (job arrays),
  ``SLURM_JOB_NODELIST``, ``SLURM_JOB_NUM_NODES``... in every task (sbatch(1), "OUTPUT
  ENVIRONMENT VARIABLES").
* Kubernetes gives a container ``KUBERNETES_SERVICE_HOST`` and, as ``HOSTNAME``, the pod's name;
  the pod's namespace and node only where the pod spec exposes them through the downward API
  (``fieldRef: metadata.namespace`` and so on), conventionally as ``POD_NAME``,
  ``POD_NAMESPACE`` and ``NODE_NAME`` (kubernetes.io, "Expose Pod Information to Containers
  Through Environment Variables").
* torchrun's elastic agent sets ``TORCHELASTIC_RUN_ID``, ``TORCHELASTIC_RESTART_COUNT``,
  ``TORCHELASTIC_MAX_RESTARTS``, ``GROUP_RANK`` (the node's rank) and ``GROUP_WORLD_SIZE``
  (``torch/distributed/elastic/agent/server/local_elastic_agent.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: scheduler -> (field, environment variables, first set wins)
SOURCES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "slurm": (("job_id", ("SLURM_JOB_ID", "SLURM_JOBID")),
              ("job_name", ("SLURM_JOB_NAME",)),
              ("array_job_id", ("SLURM_ARRAY_JOB_ID",)),
              ("array_task_id", ("SLURM_ARRAY_TASK_ID",)),
              ("node_list", ("SLURM_JOB_NODELIST", "SLURM_NODELIST")),
              ("num_nodes", ("SLURM_JOB_NUM_NODES", "SLURM_NNODES")),
              ("partition", ("SLURM_JOB_PARTITION",)),
              ("cluster", ("SLURM_CLUSTER_NAME",)),
              ("restart_count", ("SLURM_RESTART_COUNT",))),
    "kubernetes": (("pod", ("POD_NAME",)),
                   ("namespace", ("POD_NAMESPACE",)),
                   ("node", ("NODE_NAME",))),
    "torchelastic": (("run_id", ("TORCHELASTIC_RUN_ID",)),
                     ("restart_count", ("TORCHELASTIC_RESTART_COUNT",)),
                     ("max_restarts", ("TORCHELASTIC_MAX_RESTARTS",)),
                     ("group_rank", ("GROUP_RANK",)),
                     ("group_world_size", ("GROUP_WORLD_SIZE",))),
}
#: The longest value kept (a Slurm node list can be long: it is cut, with "...").
MAX_VALUE = 256
#: ``greentrack_run_info`` labels: one value per job or process, never a list of nodes.
PROMETHEUS_LABELS: dict[str, tuple[str, str]] = {
    "slurm_job_id": ("slurm", "job_id"), "slurm_array_task_id": ("slurm", "array_task_id"),
    "k8s_namespace": ("kubernetes", "namespace"), "k8s_pod": ("kubernetes", "pod"),
    "elastic_run_id": ("torchelastic", "run_id"),
    "elastic_restart_count": ("torchelastic", "restart_count"),
}


def job_metadata(env: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """``{"slurm": {...}, "kubernetes": {...}, "torchelastic": {...}}``, each with the fields its
    variables set (a scheduler with none is left out). Values are printable, at most
    :data:`MAX_VALUE` characters; torchrun's ``none`` run id (no rendezvous id) is left out.

    Example:
        >>> job_metadata({"SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"})
        {'slurm': {'job_id': '4242', 'array_task_id': '3'}}
    """
    source = os.environ if env is None else env
    out: dict[str, dict[str, str]] = {}
    for scheduler, fields in SOURCES.items():
        found: dict[str, str] = {}
        for name, variables in fields:
            value = next((source[v] for v in variables if source.get(v, "").strip()), None)
            text = _clean(value)
            if text is not None and not (scheduler == "torchelastic" and text == "none"):
                found[name] = text
        if scheduler == "kubernetes" and "pod" not in found and source.get("KUBERNETES_SERVICE_HOST"):
            pod = _clean(source.get("HOSTNAME"))  # the kubelet sets it to the pod's name
            if pod is not None:
                found["pod"] = pod
        if found:
            out[scheduler] = found
    return out


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = "".join(c if c.isprintable() else "?" for c in value.strip())
    if not text:
        return None
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def merge_jobs(records: list[Any]) -> dict[str, dict[str, str]]:
    """The job of a run from its stores' ``job`` meta, in order: per scheduler and field, the
    last store's value (a restarted run shows its latest restart count). Malformed entries (a
    damaged store) are skipped."""
    out: dict[str, dict[str, str]] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        for scheduler, fields in record.items():
            if scheduler in SOURCES and isinstance(fields, dict):
                kept = {k: v for k, v in fields.items()
                        if isinstance(k, str) and isinstance(v, str) and _clean(v) == v}
                out.setdefault(scheduler, {}).update(kept)
    return out


def describe(job: dict[str, dict[str, str]]) -> str:
    """One line for people: ``slurm job 4242 (array task 3) on node[01-02]; torchrun run
    abc, restart 1``; "" when no scheduler is known."""
    parts = []
    slurm, k8s, elastic = job.get("slurm", {}), job.get("kubernetes", {}), job.get("torchelastic", {})
    if slurm:
        text = f"slurm job {slurm.get('job_id', '?')}"
        if "array_task_id" in slurm:
            text += f" (array {slurm.get('array_job_id', '?')} task {slurm['array_task_id']})"
        if "node_list" in slurm:
            text += f" on {slurm['node_list']}"
        parts.append(text)
    if k8s:
        parts.append(f"kubernetes pod {k8s.get('pod', '?')}"
                     + (f" in namespace {k8s['namespace']}" if "namespace" in k8s else ""))
    if elastic:
        parts.append(f"torchrun run {elastic.get('run_id', '?')}, restart "
                     f"{elastic.get('restart_count', '0')}")
    return "; ".join(parts)


def prometheus_labels(job: dict[str, dict[str, str]]) -> dict[str, str]:
    """The bounded labels of :data:`PROMETHEUS_LABELS` (each at most 64 characters; "" unset)."""
    return {label: job.get(scheduler, {}).get(name, "")[:64]
            for label, (scheduler, name) in PROMETHEUS_LABELS.items()}


__all__ = ["MAX_VALUE", "PROMETHEUS_LABELS", "SOURCES", "describe", "job_metadata", "merge_jobs",
           "prometheus_labels"]
