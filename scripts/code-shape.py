#!/usr/bin/env python3
"""The shape of the production code, as the conventions ask for it.

    scripts/code-shape.py lengths [N]   functions longer than N lines (80)
    scripts/code-shape.py modules       which library modules each one uses

`lengths` counts a function from its `fn` line to its closing brace, in
shared/src, fhir-query/src, local/src and functions/src, and stops reading
a file at its first `#[cfg(test)]`. `modules` lists, per top-level module
of shared/src, the `crate::<module>` paths it names outside tests (the
table `shared/tests/layers.rs` enforces) and whether it uses fhir-query.
"""
import collections
import os
import re
import sys

ROOTS = ["shared/src", "fhir-query/src", "local/src", "functions/src", "consumer/src"]
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def production_lines(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line.strip().startswith("#[cfg(test)]"):
            return lines[:i]
    return lines


def code_of(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return re.sub(r"//.*", "", line)


def function_lengths():
    for root in ROOTS:
        for folder, _, files in os.walk(root):
            for name in files:
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(folder, name)
                lines = production_lines(path)
                for i, line in enumerate(lines):
                    m = FN.match(line)
                    if not m:
                        continue
                    depth, opened = 0, False
                    for j in range(i, len(lines)):
                        code = code_of(lines[j])
                        for ch in code:
                            if ch == "{":
                                depth, opened = depth + 1, True
                            elif ch == "}":
                                depth -= 1
                        if opened and depth <= 0:
                            yield j - i + 1, path, i + 1, m.group(6)
                            break
                        if not opened and code.rstrip().endswith(";"):
                            break


def lengths(limit):
    found = sorted(function_lengths(), reverse=True)
    for n, path, line, name in found[:10]:
        print(f"{n:4} {path}:{line} {name}")
    over = [f for f in found if f[0] > limit]
    print(f"{len(found)} functions; {len(over)} over {limit} lines")
    return 1 if over else 0


def modules():
    root = "shared/src"
    edges = collections.defaultdict(set)
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            top = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "main"):
                continue
            text = "\n".join(production_lines(path))
            edges[top] |= {m for m in re.findall(r"crate::([a-z_]+)", text) if m != top}
            if re.search(r"\bfhir_query::", text):
                edges[top].add("fhir-query")
    for top in sorted(edges):
        print(f"{top:14} -> {', '.join(sorted(edges[top])) or '(none)'}")
    return 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "lengths"
    if what == "lengths":
        sys.exit(lengths(int(sys.argv[2]) if len(sys.argv) > 2 else 80))
    if what == "modules":
        sys.exit(modules())
    sys.exit(__doc__)
