#!/usr/bin/env python3
"""Checks that every generated symbol the Swift layer uses exists in the generated module.

    swift_symbols.py GENERATED.swift WRAPPER.swift...

The layer refers to the generated module as `TernFFI.Name` and to the core object as
`core.method(label: ...)` / `handle.method()`; each name (and each argument label of core
calls) must be declared in the generated Swift. Swift cannot be compiled here, so this
keeps the layer from referencing a symbol a rename removed.
"""
import re
import sys


def main():
    generated = open(sys.argv[1], encoding="utf-8").read()
    types = set(re.findall(r"\b(?:class|struct|enum|protocol|typealias)\s+(\w+)", generated))
    funcs = set(re.findall(r"\bfunc\s+(\w+)", generated))
    cases = set(re.findall(r"^\s*case\s+(\w+)", generated, flags=re.M))
    # func name -> set of argument labels
    labels = {}
    for name, args in re.findall(r"\bfunc\s+(\w+)\s*\(([^)]*)\)", generated):
        labels.setdefault(name, set()).update(
            a.split(":")[0].strip().strip("`").split()[0] for a in args.split(",") if ":" in a)
    problems, checked = [], 0
    for path in sys.argv[2:]:
        text = open(path, encoding="utf-8").read()
        for name in re.findall(r"\bTernFFI\.(\w+)", text):
            checked += 1
            if name not in types and name not in funcs:
                problems.append(f"{path}: TernFFI.{name} is not declared in the generated module")
        for member in re.findall(r"\bTernFFI\.\w+\.(\w+)", text):
            checked += 1
            if member not in funcs and member not in cases:
                problems.append(f"{path}: .{member} is not declared in the generated module")
        for name, args in re.findall(r"\b(?:core|handle)\.(\w+)\(([^()]*)\)", text):
            checked += 1
            if name not in funcs:
                problems.append(f"{path}: core/handle method {name}() is not in the generated module")
                continue
            for label in re.findall(r"(\w+):", args):
                if label not in labels.get(name, set()):
                    problems.append(f"{path}: {name}() has no argument label {label}:")
        for case in re.findall(r"return \.(\w+)\(", text):
            checked += 1
            if case not in cases:
                problems.append(f"{path}: enum case .{case} is not in the generated module")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"swift symbols: {checked} references checked, {len(problems)} missing")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
