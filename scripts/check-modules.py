#!/usr/bin/env python3
"""Fails when a crate's modules depend on each other in a cycle.

For every crate of the workspace (a directory with a Cargo.toml and a src/), each
crate root (the library's src/lib.rs, a binary's src/main.rs or src/bin/<name>[/main.rs])
and the module files under it are read; every `crate::` and `super::` path outside
comments and string literals (including the paths inside `use crate::{a, b::c}`
groups) is resolved to the module it names (the longest prefix that is a module
file), and gives an edge from the module of the file it is in to that module. Inline
modules count as their file's module, except test modules (`mod tests { .. }`, like a
`tests.rs` child file): they are nodes of their own, since a test that uses a sibling
module is not a dependency of the code under test. Edges to the crate root and to
the module itself are ignored. A strongly connected component of more than one
module is a cycle: each is printed with one place (file:line) per edge, and the
script exits 1.

A parent's own relative paths to its children (`mod reads; pub use reads::X;`) are
declarations, not dependencies, and are not read.

    scripts/check-modules.py [crate dir ...]   # default: every crate of the workspace,
                                               # between modules, then between folders
    scripts/check-modules.py --depth 1 relay   # only between top-level modules (folders)
    scripts/check-modules.py --self-test       # proves it finds a cycle on a fixture
"""

import os
import re
import sys
import tempfile

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip(text):
    """`text` with comments and string/char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def modules_of(crate_dir):
    """{crate root file: {module path (tuple): file}} for each crate root of a crate.

    The module files of src/ belong to the library when there is one (a `main.rs`
    beside it is a crate of one module), else to `main.rs`; src/bin/<name>/ holds a
    binary and its modules."""
    src = os.path.join(crate_dir, "src")
    roots = {}
    has_lib = os.path.isfile(os.path.join(src, "lib.rs"))
    if has_lib:
        roots[os.path.join(src, "lib.rs")] = src
    if os.path.isfile(os.path.join(src, "main.rs")):
        # Beside a library, the binary is its own one-module crate over it.
        roots[os.path.join(src, "main.rs")] = None if has_lib else src
    bin_dir = os.path.join(src, "bin")
    if os.path.isdir(bin_dir):
        for e in sorted(os.listdir(bin_dir)):
            p = os.path.join(bin_dir, e)
            if e.endswith(".rs"):
                roots[p] = None
            elif os.path.isfile(os.path.join(p, "main.rs")):
                roots[os.path.join(p, "main.rs")] = p
    crates = {}
    for root, base in roots.items():
        mods = {(): root}
        if base is not None:
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(
                    d for d in dirnames if not (base == src and dirpath == src and d == "bin")
                )
                for f in sorted(filenames):
                    if not f.endswith(".rs"):
                        continue
                    path = os.path.join(dirpath, f)
                    if path in roots:
                        continue
                    rel = os.path.relpath(path, base)[: -len(".rs")].split(os.sep)
                    if rel[-1] == "mod":
                        rel = rel[:-1]
                    mods[tuple(rel)] = path
        crates[root] = mods
    return crates


def use_paths(code, start):
    """Paths of the `use` tree starting at `code[start]` (after `crate::`/`super::`):
    a list of (segments, offset)."""
    paths = []

    def tree(i, prefix):
        while i < len(code) and code[i].isspace():
            i += 1
        if i < len(code) and code[i] == "{":
            i += 1
            while True:
                while i < len(code) and (code[i].isspace() or code[i] == ","):
                    i += 1
                if i >= len(code) or code[i] == "}":
                    return i + 1
                i = tree(i, prefix)
        segs = list(prefix)
        while True:
            m = IDENT.match(code, i)
            if not m:
                if code.startswith("*", i):
                    i += 1
                paths.append((segs, start))
                return i
            segs.append(m.group(0))
            i = m.end()
            j = i
            while j < len(code) and code[j].isspace():
                j += 1
            if code.startswith("::", j):
                i = j + 2
                while i < len(code) and code[i].isspace():
                    i += 1
                if i < len(code) and code[i] == "{":
                    return tree(i, segs)
                continue
            paths.append((segs, start))
            return i

    tree(start, [])
    return paths


PATH = re.compile(r"(?<![A-Za-z0-9_:])((?:super\s*::\s*)+|crate\s*::\s*)")
INLINE_MOD = re.compile(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{")


def edges_of(mods):
    """[(from module, to module, file, line)] of one crate."""
    known = set(mods)
    edges = []
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            code = strip(f.read())
        # Inline modules: (name, brace depth at which it closes).
        opens = {m.end() - 1: m.group(1) for m in INLINE_MOD.finditer(code)}
        depth, stack, inline_at = 0, [], {}
        for i, c in enumerate(code):
            if c == "{":
                if i in opens:
                    stack.append((opens[i], depth))
                depth += 1
            elif c == "}":
                depth -= 1
                if stack and stack[-1][1] == depth:
                    stack.pop()
            inline_at[i] = tuple(name for name, _ in stack)
        for m in PATH.finditer(code):
            head = m.group(1)
            if head.startswith("crate"):
                base = ()
            else:
                ups = head.count("super")
                here = mod + inline_at.get(m.start(), ())
                if ups > len(here):
                    continue
                base = here[: len(here) - ups]
            for segs, off in use_paths(code, m.end()):
                full = base + tuple(segs)
                target = max(
                    (full[:k] for k in range(len(full) + 1) if full[:k] in known),
                    key=len,
                )
                inline = inline_at.get(m.start(), ())
                frm = mod + inline[: inline.index("tests") + 1] if "tests" in inline else mod
                if target and target != frm:
                    line = code.count("\n", 0, off) + 1
                    edges.append((frm, target, path, line))
    return edges


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan)."""
    graph = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(mod) or "crate"


def check(crate_dirs, depth=None, say=print):
    """Whether no crate of `crate_dirs` has a cycle; with `depth`, modules are first
    merged into their ancestor of that depth (`--depth 1`: top-level folders)."""
    failed = False
    for crate_dir in crate_dirs:
        for root, mods in modules_of(crate_dir).items():
            edges = edges_of(mods)
            if depth is not None:
                # Test modules stay nodes of their own below the merged ancestor.
                def merged(m):
                    return m[:depth] + (("tests",) if "tests" in m[depth:] else ())

                edges = [
                    (merged(a), merged(b), p, l)
                    for a, b, p, l in edges
                    if merged(a) != merged(b)
                ]
            found = cycles(edges)
            label = os.path.relpath(root)
            if not found:
                say(f"ok    {label}: {len(mods)} modules, {len({e[:2] for e in edges})} dependencies, no cycle")
                continue
            failed = True
            say(f"FAIL  {label}: modules in a cycle")
            for comp in found:
                members = set(comp)
                say("  cycle: " + " <-> ".join(name(m) for m in comp))
                seen = set()
                for a, b, path, line in edges:
                    if a in members and b in members and (a, b) not in seen:
                        seen.add((a, b))
                        say(f"    {name(a)} -> {name(b)}  ({os.path.relpath(path)}:{line})")
    return not failed


def workspace_crates(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("target", ".git", "node_modules") and not d.startswith(".")
        )
        if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
            out.append(dirpath)
    return out


def self_test():
    """A fixture with a cycle must fail, the same without it must pass; paths in
    comments and strings never count."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "src")
        os.makedirs(os.path.join(src, "a"))
        files = {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a/mod.rs": "mod inner;\nuse crate::{b::{Thing, other}, a::inner::X};\n"
            "// crate::c::Never (a comment)\n"
            "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
            "a/inner.rs": "pub struct X;\nfn f() -> super::super::b::Thing { todo() }\n",
            "b.rs": "pub struct Thing;\nconst S: &str = \"crate::a::inner\";\nfn g() { let _ = crate::a::inner::X; }\n",
        }
        for rel, text in files.items():
            with open(os.path.join(src, rel), "w") as f:
                f.write(text)
        with open(os.path.join(d, "Cargo.toml"), "w") as f:
            f.write("[package]\nname = \"fixture\"\n")
        report = []
        if check([d], say=report.append) or not any("a::inner -> b" in r for r in report):
            print("self-test FAILED: a cycle a::inner -> b -> a::inner was not found")
            return False
        # Break the cycle (b no longer uses a); a comment and a string still name it.
        with open(os.path.join(src, "b.rs"), "w") as f:
            f.write("pub struct Thing;\nconst S: &str = \"crate::a::inner\";\n/* crate::a::inner::X */\n")
        if not check([d], say=report.append):
            print("self-test FAILED: a graph without a cycle was refused")
            return False
    print("self-test passed: the fixture's cycle is found, comments and strings are ignored")
    return True


def main(argv):
    args = argv[1:]
    if args == ["--self-test"]:
        return 0 if self_test() else 1
    depth = None
    if args[:1] == ["--depth"]:
        depth, args = int(args[1]), args[2:]
    if not self_test():
        return 1
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crates = args or workspace_crates(root)
    if depth is not None:
        return 0 if check(crates, depth) else 1
    modules = check(crates)
    print("between top-level modules (folders):")
    folders = check(crates, 1)
    return 0 if modules and folders else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
