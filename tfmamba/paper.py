"""The paper's reported numbers, read from the one data file `tfmamba/data/paper_results.yaml`
(the paper's training setting is the config `tfmamba/data/configs/paper.yaml`)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def paper_numbers() -> dict[str, Any]:
    """Tables I-III and the stated hyper-parameters of arXiv 2412.16904."""
    with resources.files("tfmamba").joinpath("data/paper_results.yaml").open("r", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def paper_params(variant: str) -> float:
    """The paper's parameter count of a Table III variant, in parameters (not millions)."""
    return paper_numbers()["table3"][variant]["params_m"] * 1e6
