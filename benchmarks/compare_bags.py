"""Compare every bag of two ``zoomfeat.extract`` output directories.

    python benchmarks/compare_bags.py A_DIR B_DIR

For each HDF5 file found under either directory (feature bags and ``*_patches.h5`` coords files,
matched by relative path): the datasets ``features``, ``coords`` and ``parent_idx`` must be
bitwise equal (same dtype, shape and bytes), the ``coords`` attributes equal, and the file
attributes ``config_hash``, ``encoder``, ``timestep``, ``taps``, ``seed`` and ``mpp`` equal. Any
other file attribute that differs (``created``, the full ``config`` JSON ...) is printed as
information. Exit status 0 when everything that must match does, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

DATASETS = ("features", "coords", "parent_idx")
MUST_MATCH_ATTRS = ("config_hash", "encoder", "timestep", "taps", "seed", "mpp")


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*.h5") if not p.name.startswith(".")}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _compare_attrs(a, b, must: tuple[str, ...] | None, where: str) -> tuple[list[str], list[str]]:
    """(errors, informational differences) between two attribute sets."""
    errors, info = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if _same(va, vb):
            continue
        ra, rb = repr(va), repr(vb)
        if len(ra) + len(rb) > 160:  # e.g. the full config JSON: say that it differs, not how
            line = f"{where} attr {key!r} differs ({len(ra)} vs {len(rb)} characters)"
        else:
            line = f"{where} attr {key!r}: {ra} != {rb}"
        (errors if must is None or key in must else info).append(line)
    return errors, info


def compare_file(a: Path, b: Path, name: str) -> tuple[list[str], list[str]]:
    """(errors, informational differences) between two bag files."""
    errors, info = [], []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for ds in DATASETS:
            if (ds in fa) != (ds in fb):
                errors.append(f"{name}: dataset {ds!r} in only one of the files")
                continue
            if ds not in fa:
                continue
            x, y = fa[ds][()], fb[ds][()]
            if x.dtype != y.dtype or x.shape != y.shape:
                errors.append(f"{name}: {ds} is {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            elif x.tobytes() != y.tobytes():
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64)).max()
                errors.append(f"{name}: {ds} differs (max abs difference {diff:.3g})")
        if "coords" in fa and "coords" in fb:
            e, _ = _compare_attrs(dict(fa["coords"].attrs), dict(fb["coords"].attrs), None, f"{name}: coords")
            errors += e
        e, i = _compare_attrs(dict(fa.attrs), dict(fb.attrs), MUST_MATCH_ATTRS, name)
        errors += e
        info += i
    return errors, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    fa, fb = _files(args.a), _files(args.b)
    errors: list[str] = [f"only in {args.a}: {p}" for p in sorted(fa - fb)]
    errors += [f"only in {args.b}: {p}" for p in sorted(fb - fa)]
    info: list[str] = []
    common = sorted(fa & fb)
    for rel in common:
        e, i = compare_file(args.a / rel, args.b / rel, str(rel))
        errors += e
        info += i
    for line in info:
        print(f"info: {line}")
    for line in errors:
        print(f"DIFFERENT: {line}")
    verdict = "identical" if not errors else f"{len(errors)} difference(s)"
    print(
        f"{len(common)} file(s) compared: {verdict} in features, coords, parent_idx, coords attributes and "
        f"{', '.join(MUST_MATCH_ATTRS)}; {len(info)} other attribute difference(s) (information)"
    )
    return 0 if not errors and common else 1


if __name__ == "__main__":
    sys.exit(main())
