"""Patient-level stratified cross-validation splits, saved as CSV and reusable.

A split table has one row per (repeat, fold, slide)::

    repeat, fold, part, slide_id, case_id, label        part in {train, val, test}

Test folds come from scikit-learn's ``StratifiedGroupKFold`` over slides grouped by patient
(``case_id``), so a patient never spans train and test; the validation part is carved out of
each training fold the same way (patient-grouped, stratified), so it never shares a patient
with train or test either. The cohort is sorted by slide id first, so the splits depend only
on the cohort, ``folds``, ``repeats``, ``val_fraction`` and ``seed``, never on row order.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import ConfigError, InputError

SPLIT_COLUMNS = ("repeat", "fold", "part", "slide_id", "case_id", "label")
PARTS = ("train", "val", "test")


def _random_state(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def check_class_counts(
    case_ids: Sequence[str], labels: Sequence[int], folds: int, source: str = "cohort"
) -> None:
    """Every class needs at least ``folds`` patients, else some test fold lacks it: :class:`InputError`."""
    table = pd.DataFrame({"case_id": list(case_ids), "label": list(labels)})
    counts = table.drop_duplicates().groupby("label")["case_id"].nunique()
    if len(counts) < 2:
        raise InputError(
            f"{source}: only one class in the cohort (label {counts.index.tolist()}); a task needs at least two"
        )
    small = counts[counts < folds]
    if len(small):
        detail = ", ".join(f"label {k}: {v} patient(s)" for k, v in small.items())
        raise InputError(
            f"{source}: a class has fewer patients than cross-validation folds ({folds}): {detail}; "
            f"use fewer folds (cv.folds=) or add patients"
        )


def _conflicting_cases(table: pd.DataFrame) -> list[str]:
    per_case = table.groupby("case_id")["label"].nunique()
    return per_case[per_case > 1].index.tolist()


def _val_n_splits(train: pd.DataFrame, val_fraction: float) -> int:
    """The number of patient-grouped folds the validation part is the first of:
    ``max(2, min(round(1 / val_fraction), patients of the smallest class, patients))``."""
    min_cases = int(train.drop_duplicates(["case_id", "label"]).groupby("label")["case_id"].nunique().min())
    return max(2, min(round(1 / val_fraction), min_cases, train["case_id"].nunique()))


def check_val_split(
    train: pd.DataFrame, *, val_fraction: float, folds: int, where: str, source: str = "cohort"
) -> None:
    """Refuse a training part whose validation part scikit-learn cannot make (before it tries).

    The validation part is the first fold of ``StratifiedGroupKFold(n_splits)`` over the
    training part (:func:`_val_n_splits`); scikit-learn refuses when *every* class holds fewer
    slides than ``n_splits`` (its other conditions, more splits than patients or slides, cannot
    arise: ``n_splits`` <= the patients of the smallest class, or 2 when there are >= 2
    patients). Since ``n_splits`` <= the smallest class's patients <= its slides whenever that
    class has >= 2 patients, this happens exactly when ``n_splits`` is 2 and every class in the
    training part has a single slide: e.g. 2 + 2 one-slide patients with ``cv.folds=2``.
    """
    if val_fraction <= 0 or train["case_id"].nunique() < 2:
        return
    n_splits = _val_n_splits(train, val_fraction)
    slides = train.groupby("label")["slide_id"].count()
    if (slides < n_splits).all():
        counts = ", ".join(
            f"label {k}: {train.loc[train['label'] == k, 'case_id'].nunique()} patient(s), {v} slide(s)"
            for k, v in slides.items()
        )
        raise InputError(
            f"{source}: {where}: the training part holds {counts}, too few for the patient-grouped "
            f"validation part (cv.val_fraction={val_fraction:g} needs, in every training part, a class with "
            f">= {n_splits} slides). Use fewer folds (cv.folds={max(2, folds - 1)} or less), cv.val_fraction=0 "
            f"(no early stopping), or more patients"
        )


def _val_split(train: pd.DataFrame, val_fraction: float, random_state: int) -> np.ndarray:
    """Boolean mask over ``train`` rows: the patient-grouped stratified validation part
    (:func:`check_val_split` has refused the training parts it cannot be made from)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if val_fraction <= 0:
        return np.zeros(len(train), dtype=bool)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"cv.val_fraction must be in [0, 1), got {val_fraction}")
    n_splits = _val_n_splits(train, val_fraction)
    if train["case_id"].nunique() < 2:
        return np.zeros(len(train), dtype=bool)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, val_rows = next(
            sgkf.split(np.zeros(len(train)), train["label"].to_numpy(), train["case_id"].to_numpy())
        )
    mask = np.zeros(len(train), dtype=bool)
    mask[val_rows] = True
    return mask


def make_splits(
    slide_ids: Sequence[str],
    case_ids: Sequence[str],
    labels: Sequence[int],
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    val_fraction: float = 0.2,
    source: str = "cohort",
) -> pd.DataFrame:
    """Patient-grouped stratified ``folds``-fold CV, ``repeats`` times, with a validation part.

    Args:
        slide_ids, case_ids, labels: the cohort, one entry per slide (labels 0/1).
        folds, repeats, seed, val_fraction: ``cv.*``.
        source: the file the cohort came from, for messages.

    Returns:
        The split table (columns :data:`SPLIT_COLUMNS`), one row per (repeat, fold, slide).

    Raises:
        InputError: a class has fewer patients than ``folds``, a patient's slides carry
            different labels (a patient-level split cannot stratify them), or a training part
            is too small for its validation part (:func:`check_val_split`). Every condition
            under which scikit-learn's splitters would refuse is checked before they run.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise ConfigError(f"cv.folds must be >= 2, got {folds}")
    if repeats < 1:
        raise ConfigError(f"cv.repeats must be >= 1, got {repeats}")
    cohort = pd.DataFrame(
        {
            "slide_id": [str(s) for s in slide_ids],
            "case_id": [str(c) for c in case_ids],
            "label": np.asarray(labels, dtype=np.int64),
        }
    )
    dup = cohort["slide_id"][cohort["slide_id"].duplicated()].tolist()
    if dup:
        raise InputError(f"{source}: slide ids appear more than once in the cohort: {dup[:10]}")
    conflicting = _conflicting_cases(cohort)
    if conflicting:
        raise InputError(
            f"{source}: {len(conflicting)} patient(s) have slides with different labels: {conflicting[:10]}"
        )
    check_class_counts(cohort["case_id"], cohort["label"], folds, source)
    cohort = cohort.sort_values("slide_id", kind="stable").reset_index(drop=True)
    y = cohort["label"].to_numpy()
    groups = cohort["case_id"].to_numpy()
    frames = []
    for repeat in range(repeats):
        sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=_random_state(seed, repeat))
        for fold, (train_rows, test_rows) in enumerate(sgkf.split(np.zeros(len(cohort)), y, groups)):
            train = cohort.iloc[train_rows].reset_index(drop=True)
            check_val_split(
                train,
                val_fraction=val_fraction,
                folds=folds,
                where=f"repeat {repeat} fold {fold}",
                source=source,
            )
            val_mask = _val_split(train, val_fraction, _random_state(seed, repeat, fold, 1))
            parts = [
                train[~val_mask].assign(part="train"),
                train[val_mask].assign(part="val"),
                cohort.iloc[test_rows].assign(part="test"),
            ]
            frame = pd.concat(parts, ignore_index=True).assign(repeat=repeat, fold=fold)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)[list(SPLIT_COLUMNS)]


def validate_splits(splits: pd.DataFrame, source: str = "splits") -> pd.DataFrame:
    """Check a split table's columns and that no patient spans two parts of one fold."""
    missing = [c for c in SPLIT_COLUMNS if c not in splits.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {missing} (columns: {list(splits.columns)}; expected {list(SPLIT_COLUMNS)})"
        )
    splits = splits.assign(slide_id=splits["slide_id"].astype(str), case_id=splits["case_id"].astype(str))
    bad_parts = sorted(set(splits["part"]) - set(PARTS))
    if bad_parts:
        raise InputError(f"{source}: unknown part(s) {bad_parts}; expected {list(PARTS)}")
    for (repeat, fold), frame in splits.groupby(["repeat", "fold"]):
        if frame["slide_id"].duplicated().any():
            dup = frame["slide_id"][frame["slide_id"].duplicated()].tolist()[:10]
            raise InputError(f"{source}: repeat {repeat} fold {fold} lists slide(s) twice: {dup}")
        if not (frame["part"] == "train").any() or not (frame["part"] == "test").any():
            raise InputError(f"{source}: repeat {repeat} fold {fold} has no train or no test slides")
        spanning = frame.groupby("case_id")["part"].nunique()
        spanning = spanning[spanning > 1].index.tolist()
        if spanning:
            raise InputError(
                f"{source}: repeat {repeat} fold {fold}: patient(s) in more than one part: {spanning[:10]}"
            )
    return splits


def save_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    """Check ``splits`` and write them to ``path`` atomically (reusable with ``cv.splits=``)."""
    path = Path(path)
    checked = validate_splits(splits)
    with atomic_path(path) as tmp:
        checked.to_csv(tmp, index=False)
    return path


def load_splits(path: str | Path, cohort: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a split CSV written by :func:`save_splits` (or by hand) and check it.

    With ``cohort`` (columns slide_id, case_id, label): slides in the splits but not in the
    cohort, or with a different label, are an error; cohort slides absent from the splits
    are left out with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no split file at {path} (cv.splits=)")
    try:
        table = pd.read_csv(path, dtype={"slide_id": str, "case_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable split CSV ({err}) (cv.splits=)") from err
    splits = validate_splits(table, str(path))
    if cohort is not None:
        known = dict(zip(cohort["slide_id"].astype(str), cohort["label"].astype(int)))
        unknown = sorted(set(splits["slide_id"]) - set(known))
        if unknown:
            raise InputError(
                f"{path}: {len(unknown)} slide(s) are not in this task's cohort (no label or no bag): {unknown[:20]}"
            )
        relabelled = splits[[known[s] != int(lab) for s, lab in zip(splits["slide_id"], splits["label"])]]
        if len(relabelled):
            raise InputError(
                f"{path}: labels differ from the task's labels for slide(s) {sorted(set(relabelled['slide_id']))[:20]}"
            )
        absent = sorted(set(known) - set(splits["slide_id"]))
        if absent:
            warnings.warn(
                f"{len(absent)} cohort slide(s) are not in {path} and are left out: {absent[:10]}",
                BenchWarning,
                stacklevel=2,
            )
    return splits


def fold_keys(splits: pd.DataFrame) -> list[tuple[int, int]]:
    """Sorted (repeat, fold) pairs of a split table."""
    return sorted({(int(r), int(f)) for r, f in zip(splits["repeat"], splits["fold"])})


def fold_parts(splits: pd.DataFrame, repeat: int, fold: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` slide ids of one fold."""
    frame = splits[(splits["repeat"] == repeat) & (splits["fold"] == fold)]
    return {part: frame.loc[frame["part"] == part, "slide_id"].tolist() for part in PARTS}
