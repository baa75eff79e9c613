"""Manifest builder for any other corpus, from a CSV with `path, label` columns.

Optional columns: `utt_id` (default: the file name without extension), `speaker`
(default: `session` if present, else "unknown"), `session` or `split` (one is needed for
the folds). Relative paths are resolved against the CSV's folder. Columns are separated by commas, or by the
semicolons or tabs spreadsheets in many locales save with (read from the header).

The cells are checked here, where they enter, because a spreadsheet's slips would
otherwise become classes or folds silently:
- a row with an empty path, label, session or split is skipped into `problems.csv`
  (reason `no path`, `no label`, ...); with `--labels` an empty label is an error;
- values of the label, session or split column that differ only in case or surrounding
  spaces (`Neutral`, `neutral `) stop the build before anything is written, naming each
  spelling and its row count; `label_map` (`Neutral=neutral`) or `labels` (matched ignoring
  case and spaces) say what was meant.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from tfmamba.audio import audio_info
from tfmamba.corpora.manifest import SPLITS, Problem
from tfmamba.corpora.prepare import BuildResult
from tfmamba.errors import ConfigError, DataError
from tfmamba.progress_bar import progress_bar

logger = logging.getLogger(__name__)

SKIP_REASONS = {"path": "no path", "label": "no label", "session": "no session", "split": "no split"}
CHECKED_COLUMNS = ("label", "session", "split")
LINES_SHOWN = 3
DELIMITERS = (",", ";", "\t")  # a comma-separated file; what spreadsheets in many locales save instead


def parse_label_map(entries: Iterable[str] | None) -> dict[str, str]:
    """`OLD=NEW` strings (the `--label-map` option) as a dict, spaces around each side trimmed."""
    mapping: dict[str, str] = {}
    for entry in entries or []:
        old, sep, new = entry.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ConfigError(f"--label-map {entry!r}: expected OLD=NEW, both non-empty (e.g. Neutral=neutral)")
        if mapping.get(old, new) != new:
            raise ConfigError(f"--label-map maps {old!r} to both {mapping[old]!r} and {new!r}")
        mapping[old] = new
    return mapping


def read_label_csv(
    csv_path: str | Path,
    labels: list[str] | None = None,
    label_map: Mapping[str, str] | None = None,
) -> BuildResult:
    """Parse and check the CSV (no audio access); returns the usable rows, class order and skips."""
    csv_path = Path(csv_path).resolve()
    table = _read_table(csv_path)
    if label_map:
        table["label"] = _apply_label_map(table["label"], label_map)
    given = _check_label_list(labels) if labels else {}
    if given:
        table["label"] = _resolve_given_labels(table, given, csv_path)
    _refuse_variants(table, csv_path)
    table, problems = _skip_empty_cells(table, csv_path.parent)
    table = _normalise(table, csv_path)
    return BuildResult(table, list(given.values()) or sorted(table["label"].unique()), problems)


def _read_table(csv_path: Path) -> pd.DataFrame:
    """The CSV as strings, with the required columns present and at least one row."""
    if not csv_path.exists():
        raise DataError(f"{csv_path}: CSV not found")
    try:
        table = pd.read_csv(csv_path, sep=_delimiter(csv_path), encoding="utf-8-sig", dtype=str,
                            keep_default_na=False)
    except UnicodeDecodeError as err:
        raise DataError(f"{csv_path}: unreadable CSV ({err}); save it as UTF-8") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path}: unreadable CSV ({err})") from err
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing columns {missing} (need path, label)")
    if len(table) == 0:
        raise DataError(f"{csv_path}: empty CSV, no utterances")
    if "session" not in table.columns and "split" not in table.columns:
        raise DataError(f"{csv_path}: needs a 'session' or a 'split' column to make folds")
    return table


def _delimiter(csv_path: Path) -> str:
    """The header's separator: a comma, or the semicolon or tab a spreadsheet saves with when the header holds
    more of those than of commas (a `path;label;session` header read with commas is one column)."""
    with csv_path.open(encoding="utf-8-sig", errors="replace") as file:
        header = file.readline()
    found = max(DELIMITERS, key=header.count)
    if found != "," and header.count(found) > header.count(","):
        logger.info("%s: columns separated by %r", csv_path, found)
        return found
    return ","


def _line(index: int) -> int:
    """The CSV line of a row (line 1 is the header)."""
    return index + 2


def _apply_label_map(cells: pd.Series, label_map: Mapping[str, str]) -> pd.Series:
    """Replace each label whose trimmed text is a key of `label_map` (applied once, not chained)."""
    mapping = {old.strip(): new.strip() for old, new in label_map.items()}
    unused = sorted(set(mapping) - set(cells.str.strip()))
    if unused:
        logger.warning("--label-map: no row has the label(s) %s", ", ".join(map(repr, unused)))
    return cells.map(lambda cell: mapping.get(cell.strip(), cell))


def _check_label_list(labels: list[str]) -> dict[str, str]:
    """`--labels` as a lookup from its case-folded, trimmed form to the given spelling."""
    lookup: dict[str, str] = {}
    for label in labels:
        key = label.strip().casefold()
        if not key:
            raise ConfigError("--labels: an empty label cannot be a class")
        if key in lookup:
            raise ConfigError(f"--labels: {lookup[key]!r} and {label!r} are the same label ignoring case and spaces")
        lookup[key] = label.strip()
    return lookup


def _resolve_given_labels(table: pd.DataFrame, lookup: dict[str, str], csv_path: Path) -> pd.Series:
    """Each row's label in the spelling of `--labels`; an empty or unknown label is an error."""
    resolved = []
    for index, path, cell in zip(table.index, table["path"], table["label"]):
        key = cell.strip().casefold()
        if not key and path.strip():
            raise DataError(
                f"{csv_path}: no label for {path!r} (line {_line(index)}); with --labels every row needs one "
                "(without --labels such rows are skipped into problems.csv)"
            )
        if key and key not in lookup:
            raise DataError(
                f"{csv_path}: unknown label {cell.strip()!r} for {path!r} (line {_line(index)}); "
                f"--labels allows {list(lookup.values())}"
            )
        resolved.append(lookup.get(key, ""))
    return pd.Series(resolved, index=table.index)


def _spelling_groups(cells: pd.Series) -> list[dict[str, list[int]]]:
    """Groups of distinct spellings that are equal ignoring case and surrounding spaces.

    Each group maps a spelling to the row indices that use it, most used (then first seen) first.
    """
    by_key: dict[str, dict[str, list[int]]] = {}
    for index, cell in cells.items():
        if cell.strip():
            by_key.setdefault(cell.strip().casefold(), {}).setdefault(cell, []).append(index)
    groups = [spellings for spellings in by_key.values() if len(spellings) > 1]
    return [dict(sorted(group.items(), key=lambda item: (-len(item[1]), item[1][0]))) for group in groups]


def _describe_group(column: str, group: dict[str, list[int]]) -> str:
    """`label 'neutral' (5 rows), 'Neutral' (1 row, line 8)`: each spelling with its row count."""
    parts = []
    for spelling, indices in group.items():
        count = f"{len(indices)} row{'s' if len(indices) > 1 else ''}"
        if len(indices) <= LINES_SHOWN:
            lines = ", ".join(str(_line(i)) for i in indices)
            count += f", line{'s' if len(indices) > 1 else ''} {lines}"
        parts.append(f"{spelling!r} ({count})")
    return f"  {column} {', '.join(parts)}"


def _label_fix_hint(cells: pd.Series, groups: list[dict[str, list[int]]]) -> str:
    """The two ways out for label variants, spelled out with this CSV's labels."""
    chosen = {next(iter(group)).strip().casefold(): next(iter(group)).strip() for group in groups}
    mappings = []
    for group in groups:
        target = next(iter(group)).strip()
        keys: dict[str, str] = {}
        for spelling in group:
            if spelling != target:
                keys.setdefault(spelling.strip(), spelling)
        mappings.extend(f"--label-map {shlex.quote(f'{key}={target}')}" for key in keys.values())
    classes = sorted({chosen.get(c.strip().casefold(), c.strip()) for c in cells if c.strip()})
    return (
        f"  say which spelling you mean: {' '.join(mappings)} (repeatable), "
        f"or --labels {' '.join(shlex.quote(c) for c in classes)} (matched ignoring case and spaces), "
        "or fix the CSV"
    )


def _refuse_variants(table: pd.DataFrame, csv_path: Path) -> None:
    """Stop when a column spells one value several ways: each spelling would be its own class or fold."""
    lines = []
    for column in (c for c in CHECKED_COLUMNS if c in table.columns):
        groups = _spelling_groups(table[column])
        if not groups:
            continue
        lines.extend(_describe_group(column, group) for group in groups)
        if column == "label":
            lines.append(_label_fix_hint(table[column], groups))
        else:
            lines.append(f"  fix the {column} column in the CSV: one spelling per {column}")
    if lines:
        header = f"{csv_path}: values that differ only in case or surrounding spaces; nothing was written:"
        raise DataError("\n".join([header, *lines]))


def _skip_empty_cells(table: pd.DataFrame, base: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """Drop rows with an empty path, label, session or split, each as a `Problem` with the reason."""
    problems, keep = [], []
    for index, row in table.iterrows():
        empty = [column for column in SKIP_REASONS if column in table.columns and not row[column].strip()]
        keep.append(not empty)
        if empty:
            path = str((base / row["path"].strip()).resolve()) if row["path"].strip() else ""
            utt_id = row.get("utt_id", "").strip() or (Path(path).stem if path else "")
            reason = SKIP_REASONS[empty[0]] + ("" if path else f" (line {_line(index)})")
            problems.append(Problem(utt_id, path, reason))
    return table[keep].copy(), problems


def _normalise(table: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """Trimmed values, absolute paths, default utt_id and speaker, integer sessions; checks splits and ids."""
    table["label"] = table["label"].str.strip()
    table["path"] = [str((csv_path.parent / p.strip()).resolve()) for p in table["path"]]
    if "utt_id" not in table.columns:
        table["utt_id"] = [Path(p).stem for p in table["path"]]
    if "speaker" not in table.columns:
        table["speaker"] = table["session"].str.strip() if "session" in table.columns else "unknown"
    if "split" in table.columns:
        table["split"] = table["split"].str.strip()
        unknown = ~table["split"].isin(SPLITS)
        if unknown.any():
            index = table.index[unknown][0]
            raise DataError(
                f"{csv_path}: unknown split {table.at[index, 'split']!r} (line {_line(index)}); "
                f"expected one of {list(SPLITS)}"
            )
    if "session" in table.columns:
        table["session"] = [int(s) if s.strip().lstrip("-").isdigit() else s.strip() for s in table["session"]]
        if len({type(s) for s in table["session"]}) > 1:
            table["session"] = table["session"].astype(str)
    dup = table["utt_id"][table["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{csv_path}: duplicate utt_id {dup[:5]} (add a unique utt_id column)")
    return table


def build_from_csv(
    csv_path: str | Path,
    labels: list[str] | None = None,
    max_duration: float | None = None,
    label_map: Mapping[str, str] | None = None,
) -> BuildResult:
    """Read durations from the audio headers; rows with empty cells and unreadable files become problems."""
    checked = read_label_csv(csv_path, labels, label_map)
    table = checked.table
    keep = ["utt_id", "path", "label", "speaker"] + [c for c in ("session", "split") if c in table.columns]
    rows, problems = [], list(checked.problems)
    for record in progress_bar(table[keep].to_dict("records"), desc="csv", unit="utt"):
        try:
            info = audio_info(record["path"])
        except DataError as err:
            problems.append(Problem(record["utt_id"], record["path"], str(err).removeprefix(f"{record['path']}: ")))
            continue
        if max_duration is not None and info.duration_s > max_duration:
            problems.append(
                Problem(record["utt_id"], record["path"], f"duration {info.duration_s:.1f} s over the cap of {max_duration:g} s")
            )
            continue
        rows.append({**record, "duration": info.duration_s})
    return BuildResult(pd.DataFrame(rows), checked.labels, problems, {})
