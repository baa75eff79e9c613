"""Tests for tfmamba.metrics: WA/UA/WF1 against hand-computed values, confusion matrix, errors, plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfmamba.metrics import Metrics, best_name, compute_metrics, plot_confusion, with_current_names


def test_imbalanced_case_wa_differs_from_ua() -> None:
    # true: 4 x neu, 2 x ang; one ang predicted as neu.
    # WA = 5/6. Recalls: neu 4/4 = 1, ang 1/2 -> UA = 0.75.
    # F1 neu: P = 4/5, R = 1 -> 8/9; F1 ang: P = 1, R = 1/2 -> 2/3.
    # WF1 = (4 * 8/9 + 2 * 2/3) / 6 = 22/27.
    m = compute_metrics([0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1], ["neu", "ang"])
    assert m.wa == pytest.approx(5 / 6)
    assert m.ua == pytest.approx(0.75)
    assert m.wf1 == pytest.approx(22 / 27)
    assert m.wa != pytest.approx(m.ua)
    assert m.confusion == [[4, 0], [1, 1]]
    assert m.support == [4, 2]
    assert m.labels == ["neu", "ang"]
    assert all(isinstance(v, float) for v in (m.wa, m.ua, m.wf1))


def test_class_absent_from_y_true_does_not_lower_ua() -> None:
    # Class 2 never occurs in y_true but is predicted once.
    # Present classes {0, 1}: recalls 1 and 1/2 -> UA = 0.75 (not 1.5 / 3 = 0.5).
    # WA = 3/4. F1: class 0 -> 1, class 1 (P = 1, R = 1/2) -> 2/3; WF1 = (2 + 2 * 2/3) / 4 = 5/6.
    m = compute_metrics([0, 0, 1, 1], [0, 0, 1, 2], 3)
    assert m.ua == pytest.approx(0.75)
    assert m.wa == pytest.approx(0.75)
    assert m.wf1 == pytest.approx(5 / 6)
    assert m.labels == ["0", "1", "2"]
    assert m.confusion == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert m.support == [2, 2, 0]


def test_confusion_covers_all_labels_rows_true_cols_pred() -> None:
    y_true = [0, 1, 2, 2, 3]
    y_pred = [1, 1, 2, 0, 3]
    m = compute_metrics(y_true, y_pred, ["a", "b", "c", "d", "e"])
    cm = np.array(m.confusion)
    assert cm.shape == (5, 5)
    assert cm.sum() == len(y_true)
    assert cm[0, 1] == 1  # a true, predicted b
    assert cm[2, 0] == 1  # c true, predicted a
    assert cm[4].sum() == 0 and cm[:, 4].sum() == 0
    assert m.support == [1, 1, 2, 1, 0]


def test_perfect_predictions() -> None:
    m = compute_metrics([2, 0, 1, 1], [2, 0, 1, 1], 3)
    assert (m.wa, m.ua, m.wf1) == (1.0, 1.0, 1.0)


def test_torch_and_numpy_inputs_match_lists() -> None:
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    ref = compute_metrics(y_true, y_pred, 3)
    from_torch = compute_metrics(torch.tensor(y_true), torch.tensor(y_pred), 3)
    from_numpy = compute_metrics(np.array(y_true, dtype=np.int32), np.array(y_pred), 3)
    assert from_torch == ref
    assert from_numpy == ref


def test_to_dict_prefix() -> None:
    m = compute_metrics([0, 1], [0, 0], ["x", "y"])
    assert m.to_dict() == {"wa": 0.5, "ua": 0.5, "wf1": m.wf1}
    assert set(m.to_dict("val/")) == {"val/wa", "val/ua", "val/wf1"}


def test_a_metric_at_its_best_epoch_has_one_name_and_old_rows_are_renamed() -> None:
    assert best_name("valid_ua") == "valid_ua_best" and best_name("valid_wf1") == "valid_wf1_best"
    old = {"epoch": 2.0, "valid_ua": 0.5, "best_valid_ua": 0.6, "best_epoch": 1.0, "lr": 1e-3}
    assert with_current_names(old) == {"epoch": 2.0, "valid_ua": 0.5, "valid_ua_best": 0.6, "best_epoch": 1.0,
                                       "lr": 1e-3}
    assert list(with_current_names(old)) == ["epoch", "valid_ua", "valid_ua_best", "best_epoch", "lr"]
    current = {"epoch": 1.0, "valid_wf1": 0.4, "valid_wf1_best": 0.4}
    assert with_current_names(current) == current


def test_metrics_is_frozen() -> None:
    m = compute_metrics([0], [0], 1)
    with pytest.raises(AttributeError):
        m.wa = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("y_true,y_pred", [([], []), (torch.tensor([], dtype=torch.long), [])])
def test_empty_input_raises(y_true, y_pred) -> None:
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(y_true, y_pred, 2)


@pytest.mark.parametrize(
    "y_true,y_pred,bad", [([0, 3], [0, 1], "3"), ([0, 1], [0, -1], "-1"), ([0, 1], [0, 2], "2")]
)
def test_out_of_range_index_raises_naming_it(y_true, y_pred, bad) -> None:
    with pytest.raises(ValueError, match=f"class index {bad}"):
        compute_metrics(y_true, y_pred, ["a", "b"] if bad == "2" else 3)


def test_other_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics([0, 1], [0], 2)
    with pytest.raises(ValueError, match="integer"):
        compute_metrics([0.5, 1.0], [0, 1], 2)
    with pytest.raises(ValueError, match=">= 1"):
        compute_metrics([0], [0], 0)
    with pytest.raises(ValueError, match="distinct"):
        compute_metrics([0], [0], ["a", "a"])
    with pytest.raises(ValueError, match="1-D"):
        compute_metrics([[0, 1]], [[0, 1]], 2)


def test_plot_confusion_writes_png(tmp_path) -> None:
    m: Metrics = compute_metrics([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], ["neu", "hap", "ang", "sad"])
    out = plot_confusion(m, tmp_path / "sub" / "cm.png", title="test")
    assert out == tmp_path / "sub" / "cm.png"
    data = out.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("seed", range(6))
def test_scores_match_scikit_learn_on_random_predictions(seed: int) -> None:
    # scikit-learn as the reference: accuracy, balanced accuracy over the classes present in y_true, weighted F1
    # over those classes with zero_division=0, and the full confusion matrix; classes may be absent from either side.
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 8))
    size = int(rng.integers(1, 60))
    y_true = rng.integers(0, max(1, num_classes - seed % 3), size)
    y_pred = np.where(rng.random(size) < 0.5, y_true, rng.integers(0, num_classes, size))
    m = compute_metrics(y_true, y_pred, num_classes)
    present = sorted(set(y_true.tolist()))
    assert m.confusion == sk.confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()
    assert m.wa == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-12)
    assert m.ua == pytest.approx(sk.recall_score(y_true, y_pred, labels=present, average="macro"), abs=1e-12)
    assert m.wf1 == pytest.approx(sk.f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0),
                                  abs=1e-12)
