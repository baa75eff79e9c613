"""Corpora: from a corpus on disk to a validated manifest, its folds and a problems report.

- `manifest`: the Parquet manifest format (`Manifest`, `read_manifest`, `write_manifest`,
  `manifest_hash`) and `problems.csv` (`Problem`, `write_problems`, `read_problems`).
- `folds`: the cross-validation folds made from a manifest and saved beside it (`make_folds`, `save_folds`,
  `load_folds`, `select_folds`).
- `prepare`: the idempotent driver behind `tfmamba prepare` (`prepare_corpus`).
- `iemocap`, `meld`, `csvfile`, `demo`: one builder per corpus, each returning a `BuildResult`.
"""

from __future__ import annotations

# The validation metric that picks each fold's best epoch and that a sweep optimises (its mean over
# folds), per corpus, declared here only: the paper scores MELD by weighted F1 (its 7 classes are very
# unbalanced) and IEMOCAP by WA and UA; every other corpus is selected on UA. Keys are manifest corpus
# names (`tfmamba prepare <corpus>`); values are keys of the trainer's per-epoch rows.
SELECTION_METRICS: dict[str, str] = {"meld": "valid_wf1"}
DEFAULT_SELECTION_METRIC = "valid_ua"


def selection_metric(corpus: str) -> str:
    """The validation metric that selects models on `corpus`: "valid_wf1" for MELD, else "valid_ua"."""
    return SELECTION_METRICS.get(str(corpus).lower(), DEFAULT_SELECTION_METRIC)
