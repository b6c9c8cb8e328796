"""``--format boamps``: a Boavizta BoAmps report (schemas at
https://github.com/Boavizta/BoAmps, draft-04).

What greentrack cannot know about the task (family, algorithm, dataset, publisher) comes from the
config file's ``[boamps]`` table (``task_family``, ``task_stage``, ``algorithm_type``,
``algorithm_name``, ``framework``, ``publisher``, ``confidentiality``, ``infra_type``,
``licensing``) or is stated as ``unspecified``; nothing is guessed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

FILENAME = "boamps-report.json"
FORMAT_VERSION = "0.1"
#: bytes in one GiB
GIB = 2**30


def _dt(iso: str) -> str:
    return iso.replace("T", " ").rstrip("Z")


def render(doc: dict[str, Any], opts: dict[str, Any] | None = None) -> dict[str, Any]:
    o = dict(opts or {})
    s, run, c, loc = doc["summary"], doc["run"], doc["compute"], doc["location"]
    hw = c["hardware"]
    devices = doc["energy"]["devices"]
    algorithm = {k: v for k, v in {"trainingType": o.get("training_type"),
                                   "algorithmType": o.get("algorithm_type", "unspecified"),
                                   "algorithmName": o.get("algorithm_name"),
                                   "framework": o.get("framework")}.items() if v}
    if c["tokens"]:
        dataset = {"dataUsage": "input", "dataType": "token", "dataQuantity": c["tokens"]}
    elif c["samples"]:
        dataset = {"dataUsage": "input", "dataType": o.get("data_type", "other"),
                   "dataQuantity": c["samples"]}
    else:
        dataset = {"dataUsage": "input", "dataType": o.get("data_type", "other")}
    components = [{"componentName": f"{n} x {name}", "componentType": "gpu", "nbComponent": n,
                   "manufacturer": "nvidia" if "nvidia" in name.lower() else "unknown"}
                  for name, n in hw["gpus"].items()]
    components += [{"componentName": name, "componentType": "cpu", "nbComponent": n}
                   for name, n in hw["cpus"].items()]
    ram_gb = hw.get("ram_total_gb")
    if ram_gb or any(d["kind"] == "dram" for d in devices):
        # BoAmps: one RAM component per host, memorySize the size of one in GB. The run's
        # machine record holds psutil's total / 2**30 (GiB, as codecarbon's ram_total_size):
        # in GB (1e9 bytes) it is the figure the DRAM estimate names ("25.3 GB RAM")
        ram: dict[str, Any] = {"componentType": "ram", "nbComponent": max(1, hw["hosts"])}
        if ram_gb:
            ram["memorySize"] = round(float(ram_gb) * GIB / 1e9 / ram["nbComponent"], 2)
        components.append(ram)
    if not components:
        components.append({"componentType": "other", "nbComponent": 1})
    header: dict[str, Any] = {
        "licensing": o.get("licensing", "unspecified"), "formatVersion": FORMAT_VERSION,
        "formatVersionSpecificationUri": "https://github.com/Boavizta/BoAmps/tree/main/model",
        "reportId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"greentrack:{run['run_id']}:{run['run_dir']}")),
        "reportDatetime": _dt(doc["generated_at"]),
        "reportStatus": "final" if run["status"] == "completed" else "draft",
    }
    if o.get("publisher"):
        header["publisher"] = {"name": o["publisher"],
                               "confidentialityLevel": o.get("confidentiality", "public")}
    gpu_mode = sorted({d["method"] for d in devices if d["kind"] == "gpu"})
    cpu_mode = sorted({d["method"] for d in devices if d["kind"] == "cpu"})
    measure: dict[str, Any] = {
        "measurementMethod": "greentrack", "version": doc["generator"]["version"],
        "powerConsumption": s["energy_kwh"], "measurementDuration": s["duration_s"],
        "measurementDateTime": _dt(run["started_at"]),
    }
    if cpu_mode:
        measure["cpuTrackingMode"] = ",".join(cpu_mode)
    if gpu_mode:
        measure["gpuTrackingMode"] = ",".join(gpu_mode)
    platform = (run.get("platform") or "unknown").split("-")[0].lower()
    report: dict[str, Any] = {
        "header": header,
        "task": {"taskStage": o.get("task_stage", "training"),
                 "taskFamily": o.get("task_family", "unspecified"),
                 "algorithms": [algorithm], "dataset": [dataset],
                 "taskDescription": f"greentrack run {run['run_id']}: {c['steps']} steps, "
                                    + (f"{c['flops']:.3g} FLOP ({c['flops_method']})"
                                       if c["flops"] else "training compute not recorded")},
        "measures": [measure],
        "system": {"os": platform},
        "software": {"language": "python", **({"version": run["python"]} if run.get("python") else {})},
        "infrastructure": {"infraType": o.get("infra_type") or ("publicCloud" if loc.get("cloud_provider")
                                                                else "other"),
                           "components": components},
        "environment": {"country": (loc.get("country_name") or "unknown").lower(),
                        "powerSupplierType": "public",
                        "powerSourceCarbonIntensity": s["carbon_intensity_g_per_kwh"]},
        "quality": s["quality"],
    }
    if loc.get("cloud_provider"):
        report["infrastructure"]["cloudProvider"] = loc["cloud_provider"]
    if loc.get("region") or loc.get("cloud_region"):
        report["environment"]["location"] = str(loc.get("cloud_region") or loc.get("region"))
    return report


def write(doc: dict[str, Any], out_dir: Path, opts: dict[str, Any] | None = None) -> list[Path]:
    path = out_dir / FILENAME
    path.write_text(json.dumps(render(doc, opts), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return [path]
