"""Corpora: from a corpus on disk to a validated manifest, its folds and a problems report.

- `manifest`: the Parquet manifest format (`Manifest`, `read_manifest`, `write_manifest`,
  `manifest_hash`) and `problems.csv` (`Problem`, `write_problems`, `read_problems`).
- `prepare`: the idempotent driver behind `tfmamba prepare` (`prepare_corpus`).
- `iemocap`, `meld`, `csvfile`, `demo`: one builder per corpus, each returning a `BuildResult`.
"""
