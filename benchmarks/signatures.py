"""Count the functions in ``zoomfeat/`` that take more than 4 positional parameters.

A positional parameter is one that can be passed by position: positional-only and ordinary
parameters (``posonlyargs + args`` in the AST), less a leading ``self`` / ``cls``. Parameters after
``*`` or ``*args`` are keyword-only and not counted. Functions, methods, nested functions and
lambdas are all counted. The project's rule: parameters keyword-only after the first one or two,
and no function with more than 4 positional parameters.

    python benchmarks/signatures.py            # the count, then one line per function
    python benchmarks/signatures.py --limit 6  # the functions with more than 6

Output: ``N functions in zoomfeat/ take more than 4 positional parameters``, then
``path:line name count`` for each, most parameters first.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def positional(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
    """Positional parameters of a function, less a leading ``self``/``cls``."""
    names = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def scan(package: Path, *, limit: int) -> list[tuple[str, int, str, int]]:
    """(path, line, name, count) of every function under ``package`` with more than ``limit``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                n = positional(node)
                if n > limit:
                    name = getattr(node, "name", "<lambda>")
                    found.append((path.relative_to(package.parent).as_posix(), node.lineno, name, n))
    return sorted(found, key=lambda f: (-f[3], f[0], f[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--limit", type=int, default=4, help="count functions with more positional parameters")
    ap.add_argument("--package", default=str(ROOT / "zoomfeat"), help="package directory to scan")
    args = ap.parse_args(argv)
    found = scan(Path(args.package), limit=args.limit)
    print(
        f"{len(found)} functions in {Path(args.package).name}/ take more than {args.limit} positional parameters"
    )
    for path, line, name, n in found:
        print(f"{path}:{line} {name} {n}")
    return len(found)


if __name__ == "__main__":
    main()
