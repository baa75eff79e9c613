"""Registering a sweep's best model (only with `--register NAME`): a new version of NAME, tagged with where it
came from, and the alias `champion` on the best version so far on the same objective.

    mlflow.pyfunc.load_model("models:/NAME@champion")
    mlflow models serve -m models:/NAME@champion --env-manager local
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from orchestration import mlflow_runs

logger = logging.getLogger(__name__)

CHAMPION = "champion"
DEMO_NAME = "tfmamba-demo"  # what the built-in demo registers under, never a user's model
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """A registered-model name MLflow and a URI (`models:/NAME@champion`) both take, or ValueError naming it."""
    if not _NAME.match(name):
        raise ValueError(f"--register {name!r}: use letters, digits, '.', '_' or '-' (at most 128 characters)")
    return name


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    champion: bool  # whether this version now holds the alias

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@mlflow_runs.retried
def register(uri: str, model_uri: str, name: str, tags: dict[str, Any], objective: str, mode: str,
             value: float) -> Registered:
    """Register `model_uri` as a new version of `name` with `tags` (plus `objective` and `objective_value`), and
    move `champion` to it unless the current champion is better on the same objective."""
    import mlflow

    client = mlflow_runs.client(uri)
    mlflow.set_tracking_uri(uri)
    version_tags = {**{k: str(v) for k, v in tags.items()}, "objective": f"{objective} ({mode})",
                    "objective_value": repr(float(value))}  # all digits: a tie with the champion must not move it
    version = mlflow.register_model(model_uri, name, tags=version_tags).version
    client.update_model_version(name, version, description=f"{objective} = {value:.4f} ({mode}imised); "
                                + ", ".join(f"{k} {v}" for k, v in tags.items()))
    champion = _current_champion(client, name)
    held = None
    if champion is not None and champion.tags.get("objective") == version_tags["objective"]:
        held = float(champion.tags.get("objective_value", "nan"))
    better = held is None or math.isnan(held) or (value > held if mode == "max" else value < held)
    if better:
        client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("registered %s as models:/%s/%s%s", model_uri, name, version, f" (@{CHAMPION})" if better else "")
    return Registered(name, str(version), better)


def _current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
