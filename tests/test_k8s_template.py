"""The Kubernetes work-pool template for multi-node pretraining (infra/k8s): valid, every
placeholder defined, and the rendezvous Service selecting what the pods are labelled with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra" / "k8s"


def template() -> dict:
    return json.loads((INFRA / "pretrain-job-template.json").read_text())


def placeholders(value) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(value)))


def test_a_base_job_template_with_a_job_manifest_and_variables():
    base = template()
    assert set(base) == {"job_configuration", "variables"}
    manifest = base["job_configuration"]["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert base["variables"]["type"] == "object"


def test_every_placeholder_is_a_declared_variable_with_a_default_or_set_by_the_worker():
    base = template()
    variables = base["variables"]["properties"]
    used = placeholders(base["job_configuration"])
    assert used <= set(variables), used - set(variables)
    for name in used - {"command"}:  # the worker fills in the flow run's command
        assert "default" in variables[name], f"{name} has no default"


def test_the_pod_runs_the_flow_run_command_on_gpus_with_the_shared_work_volume():
    pod = template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == "{{ command }}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["work"] == "/work" and mounts["dshm"] == "/dev/shm"  # NCCL needs a big /dev/shm
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    assert claims["work"] == {"claimName": "{{ work_volume_claim }}"}
    assert pod["restartPolicy"] == "Never"


def test_the_rendezvous_service_selects_node_zero_on_the_container_port():
    service = yaml.safe_load((INFRA / "rendezvous-service.yaml").read_text())
    pod = template()["job_configuration"]["job_manifest"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert set(service["spec"]["selector"]) == set(labels)
    assert service["spec"]["selector"]["lmforge.io/node-rank"] == "0"
    group = template()["variables"]["properties"]["rendezvous_group"]["default"]
    assert service["spec"]["selector"]["lmforge.io/rendezvous"] == group
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    assert service["spec"]["ports"][0]["port"] == 29500  # torchrun's default rendezvous port
