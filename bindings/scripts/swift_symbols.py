#!/usr/bin/env python3
"""Checks the Swift references that no compiler checks on this machine.

    swift_symbols.py GENERATED.swift WRAPPER.swift... [--uses USER.swift...]

1. The layer (WRAPPER files: Tern.swift, the glue) refers to the generated module as
   `TernFFI.Name` / `TernFFI.Record(label: ...)` and to the core object as
   `core.method(label: ...)` / `handle.method()`; each name (and each argument label of
   core calls and record initializers) must be declared in the generated Swift.
2. Code that uses the layer (USER files: the XCTest suite, and the glue itself) calls it as
   `Type.member`, `Type.method(label: ...)`, `Type(label: ...)`,
   `instance.method(label: ...)` and reads generated records (`stats().field`); each
   static member, method, initializer, argument label and record field must be declared
   in the layer or the generated module (initializer labels: an `init` of that type, or
   the memberwise initializer of a struct without one).
Swift cannot be compiled here, so this keeps the layer, the glue and the tests from
referencing a symbol a rename removed. It is a check of names, not of types.
"""
import re
import sys


def param_labels(params):
    """External argument labels of a parameter list (`_` = none)."""
    labels, depth, cur = [], 0, ""
    for i, ch in enumerate(params + ","):
        if ch in "([<{":
            depth += 1
        elif ch in ")]}" or (ch == ">" and params[i - 1:i] != "-"):
            depth -= 1
        if ch == "," and depth == 0:
            head = cur.split(":")[0].split()
            if head:
                labels.append(head[0].strip("`"))
            cur = ""
        else:
            cur += ch
    return [l for l in labels if l != "_"]


FUNC = r"\bfunc\s+`?(\w+)`?\s*(?:<[^>]*>)?\s*\(((?:[^()]|\([^()]*\))*)\)"
TYPE_DECL = re.compile(r"^(?:@\w+(?:\([^)]*\))?\s+)*(?:(?:public|private|fileprivate|internal|final|open)\s+)*"
                       r"(class|struct|enum|protocol|extension)\s+(\w+)", re.M)
STORED = re.compile(r"^    (?:(?:public|private|fileprivate|internal)(?:\(set\))?\s+)*(?:var|let)\s+(\w+)\s*:[^{\n]*$", re.M)


def initializers(layer_files):
    """Type name -> argument label sets of its initializers (top-level types of the layer)."""
    inits = {}
    for path in layer_files:
        initializers_of(open(path, encoding="utf-8").read(), inits)
    return inits


def initializers_of(text, inits):
    """Adds the initializers of the top-level types declared in `text` to `inits`."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//.*", "", text)
    decls = list(TYPE_DECL.finditer(text))
    for i, m in enumerate(decls):
        kind, name = m.group(1), m.group(2)
        chunk = text[m.end():decls[i + 1].start() if i + 1 < len(decls) else len(text)]
        found = [set(param_labels(p)) for p in re.findall(r"\binit\s*\(((?:[^()]|\([^()]*\))*)\)", chunk)]
        if kind == "struct" and not found:
            found = [set(STORED.findall(chunk))]
        if found:
            inits.setdefault(name, []).extend(found)


def check_uses(generated, layer_files, user_files):
    """Part 2: the users of the layer."""
    layer = "\n".join(open(p, encoding="utf-8").read() for p in layer_files)
    both = layer + "\n" + generated
    funcs = {}
    for name, params in re.findall(FUNC, both):
        funcs.setdefault(name, []).append(set(param_labels(params)))
    inits = initializers(layer_files)
    members = set(funcs) | set(re.findall(r"\b(?:var|let|case)\s+(\w+)", both))
    types = set(re.findall(r"\b(?:class|struct|enum|protocol|typealias)\s+(\w+)", both))
    cases = set(re.findall(r"^\s*case\s+(\w+)", both, flags=re.M))
    # Variables holding layer objects in the glue and the tests (fakes are not listed).
    receivers = (r"(?:t|tern|again|first|second|restarted|started|seen|sub|messages|observer|network|lifecycle"
                 r"|g|glue|holder|other|box)")
    problems, checked = [], 0
    for path in user_files:
        text = re.sub(r"//.*", "", open(path, encoding="utf-8").read())
        for typ, member in re.findall(r"\b(Tern\w*)\.(\w+)", text):
            if typ == "TernFFI" or typ not in types:
                continue
            checked += 1
            if member not in members and member not in types:
                problems.append(f"{path}: {typ}.{member} is not declared in the layer")
        calls = re.findall(r"(?<![\w.])" + receivers + r"\??\.(\w+)\(([^()]*)\)", text)
        calls += [(name, args) for typ, name, args in re.findall(r"\b(Tern\w*)\.(\w+)\(([^()]*)\)", text)
                  if typ != "TernFFI" and typ in types and name not in cases]
        for name, args in calls:
            checked += 1
            if name not in funcs:
                problems.append(f"{path}: method {name}() is not declared in the layer")
                continue
            used = set(re.findall(r"(?:^|,)\s*(\w+):", args))
            if not any(used <= labels for labels in funcs[name]):
                problems.append(f"{path}: no {name}() takes the labels {sorted(used)}")
        for typ, args in re.findall(r"(?<![\w.])(Tern[A-Z]\w*)\(([^()]*)\)", text):
            if typ not in inits:
                continue
            checked += 1
            used = set(re.findall(r"(?:^|,)\s*(\w+):", args))
            if not any(used <= labels for labels in inits[typ]):
                problems.append(f"{path}: no {typ}(...) initializer takes the labels {sorted(used)}")
        for field in re.findall(r"\bstats\(\)\??\.(\w+)", text) + re.findall(r"\bconfigInfo\.(\w+)", text):
            checked += 1
            if field not in members:
                problems.append(f"{path}: record field .{field} is not declared")
        for typ in re.findall(r"\b(Tern[A-Z]\w*)\s*\(", text):
            checked += 1
            if typ not in types:
                problems.append(f"{path}: type {typ} is not declared in the layer")
    return problems, checked


def main():
    args = sys.argv[1:]
    users = []
    if "--uses" in args:
        users = args[args.index("--uses") + 1:]
        args = args[:args.index("--uses")]
    sys.argv = [sys.argv[0]] + args
    generated = open(sys.argv[1], encoding="utf-8").read()
    types = set(re.findall(r"\b(?:class|struct|enum|protocol|typealias)\s+(\w+)", generated))
    funcs = set(re.findall(r"\bfunc\s+`?(\w+)", generated))
    cases = set(re.findall(r"^\s*case\s+(\w+)", generated, flags=re.M))
    # func name -> set of argument labels
    labels = {}
    for name, args in re.findall(r"\bfunc\s+`?(\w+)`?\s*\(([^)]*)\)", generated):
        labels.setdefault(name, set()).update(
            a.split(":")[0].strip().strip("`").split()[0] for a in args.split(",") if ":" in a)
    ffi_inits = {}
    initializers_of(generated, ffi_inits)
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
        for name, args in re.findall(r"\bTernFFI\.(\w+)\(([^()]*)\)", text):
            if name not in ffi_inits:
                continue
            checked += 1
            used = set(re.findall(r"(?:^|,)\s*(\w+):", args))
            if not any(used <= labels for labels in ffi_inits[name]):
                problems.append(f"{path}: no TernFFI.{name}(...) initializer takes the labels {sorted(used)}")
        for case in re.findall(r"return \.(\w+)\(", text):
            checked += 1
            if case not in cases:
                problems.append(f"{path}: enum case .{case} is not in the generated module")
    more, n = check_uses(generated, sys.argv[2:], users)
    problems += more
    checked += n
    for p in problems:
        print(p, file=sys.stderr)
    print(f"swift symbols: {checked} references checked ({len(users)} files using the layer), {len(problems)} missing")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
