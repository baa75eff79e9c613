"""Every Ray cluster launcher config in cluster/ passes Ray's own schema validation (what `ray up` runs),
and what its commands name exists: the synced checkout, the scripts, the pinned packages, the resources."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "cluster").glob("*.yaml"))


def commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k) or []]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_ray_launcher_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load(path.read_text())))


def test_validation_rejects_a_typo():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    cfg["available_node_types"]["gpu_worker"]["min_wokers"] = 0
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_synced_sources_and_named_files_exist(path):
    cfg = yaml.safe_load(path.read_text())
    for remote, local in (cfg.get("file_mounts") or {}).items():
        assert (ROOT / local).exists(), f"{path.name}: file_mounts source {local!r} for {remote} is missing"
    for command in commands(cfg):
        for script in re.findall(r"(orchestration/\w+\.py)", command):
            assert (ROOT / script).is_file(), f"{path.name}: {script} does not exist"


def test_gpu_config_installs_the_pinned_versions_and_the_driver_resource():
    cfg = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    text = "\n".join(commands(cfg))
    project = pyproject()["project"]
    (mamba_pin,) = project["optional-dependencies"]["gpu"]
    assert mamba_pin in text, "setup_commands must install the gpu extra's mamba-ssm pin"
    assert "MAMBA_SKIP_CUDA_BUILD=TRUE" in text and "--no-build-isolation" in text
    torch_version = re.search(r'"torch==([\d.]+)"', text).group(1)
    (torch_range,) = [d for d in project["dependencies"] if d.startswith("torch")]
    low, high = re.findall(r"[\d.]+", torch_range)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(torch_version) < as_tuple(high)
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray"))
    ray_version = re.search(r"==([\d.]+)", ray_pin).group(1).rstrip(".")
    for image in (cfg["docker"]["head_image"], cfg["docker"]["worker_image"]):
        assert f":{ray_version}" in image, f"{image} is not Ray {ray_version}"

    from orchestration.mlflow_runs import ENV_URI
    from orchestration.resources import DRIVER_RESOURCE

    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get(DRIVER_RESOURCE), "the head must carry the trial-driver resource"
    assert DRIVER_RESOURCE in text, "ray start on the head must declare the trial-driver resource"
    assert ENV_URI in text, "the head must export the MLflow URI the sweep reads"
    assert "--host 0.0.0.0" not in text, "MLflow must not listen on every interface"
