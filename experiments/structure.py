"""The shape of the code, for refactors (issue 11's "done when"): files and lines in mbpo/, the
functions longer than 80 lines, lines over 100 columns, and algorithm-name branches in
mbpo/agents/ (``algo``, ``policy_update`` or ``estimator`` compared with a literal).

    python -m experiments.structure            # this checkout
    python -m experiments.structure /tmp/before  # another one (a git worktree)
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

BRANCH = re.compile(r"(algo|policy_update|estimator)\s*(==|!=|in)\s*[(\"']")


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    root = pathlib.Path(args[0] if args else ".")
    if len(args) > 1 or not (root / "mbpo").is_dir():
        raise SystemExit(f"usage: python -m experiments.structure [CHECKOUT]; no mbpo/ in {root}")
    files = sorted((root / "mbpo").rglob("*.py"))
    functions = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                functions.append((length, str(path.relative_to(root)), node.name))
    functions.sort(reverse=True)
    lines = sum(len(p.read_text().splitlines()) for p in files)
    long_lines = sum(len(line) > 100 for p in files for line in p.read_text().splitlines())
    agents = sorted((root / "mbpo" / "agents").glob("*.py"))
    branches = [
        f"{p.name}:{i}: {line.strip()}"
        for p in agents
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if BRANCH.search(line)
    ]
    print(f"files in mbpo/: {len(files)} ({lines} lines)")
    print(f"functions over 80 lines: {[f for f in functions if f[0] > 80]}")
    print(f"longest five: {functions[:5]}")
    print(f"lines over 100 columns in mbpo/: {long_lines}")
    print(f"algorithm-name branches in mbpo/agents/: {len(branches)}")
    for branch in branches:
        print("   ", branch)


if __name__ == "__main__":
    main()
