#!/usr/bin/env python3
"""Extracts the public API surface of Kotlin or Swift sources as stable text.

    api_surface.py kotlin FILE...   public declarations (no bodies, no docs, no FFI plumbing)
    api_surface.py swift FILE...

Used by check-api.sh to compare against the snapshots in bindings/api/.
"""
import re
import sys

# Generated plumbing that is public for technical reasons, not API.
SKIP_NAME = re.compile(r"^(FfiConverter|Uniffi|uniffi|RustBuffer|ForeignBytes|RustCallStatus|"
                       r"InternalException|NoHandle|Disposable|IntegrityChecking|"
                       r"_Uniffi|lift|lower|read|write|allocationSize|destroy|"
                       r"uniffiClonePointer|uniffiCloneHandle)")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return [re.sub(r"(^|\s)//.*$", "", line).rstrip() for line in text.splitlines()]


def balance(s):
    return s.count("{") - s.count("}")


KT_DECL = re.compile(
    r"^(?:(?:public|open|sealed|data|abstract|override|suspend|enum|inner|companion|operator|"
    r"@JvmStatic|@Throws\([^)]*\)|final|const|lateinit|value|@JvmField)\s+)*"
    r"(class|interface|object|fun|val|var|typealias|constructor)\b\s*(?:<[^>]*>\s*)?([`\w.]*)")
KT_HIDDEN = re.compile(r"^(?:@\w+(?:\([^)]*\))?\s+)*(?:(?:public|open|sealed|data|abstract|override|"
                       r"suspend|enum|inner|companion|final|const|lateinit)\s+)*(private|internal|protected)\b")


def kotlin(lines):
    out, depth, skip_until, i = [], 0, None, 0
    last_kind = {}  # depth -> kind of the last declaration shown there
    while i < len(lines):
        s = re.sub(r"\)(override|fun)\b", r") \1", lines[i].strip())
        i += 1
        if not s:
            continue
        if skip_until is not None:
            depth += balance(s)
            if depth <= skip_until:
                skip_until = None
            continue
        m = KT_DECL.match(s)
        hidden = KT_HIDDEN.match(s) is not None
        if m or hidden:
            sig = s
            while sig.count("(") > sig.count(")") and i < len(lines):
                sig += " " + lines[i].strip()
                i += 1
            name = m.group(2).strip("`") if m else ""
            if hidden or SKIP_NAME.match(name) or (m and m.group(1) == "constructor" and "handle" in sig.lower()) \
                    or "NoHandle" in sig or "UniffiWithHandle" in sig:
                b = balance(sig)
                if b > 0:
                    skip_until = depth
                    depth += b
                continue
            kind = m.group(1)
            if depth > 0 and last_kind.get(depth - 1) in ("fun", "val", "var"):
                depth += balance(sig)  # inside a function body or initializer: not API
                continue
            last_kind = {d: k for d, k in last_kind.items() if d < depth}
            last_kind[depth] = kind
            shown = sig
            shown = cut_top_level(shown, kind in ("fun", "val", "var"))
            shown = re.sub(r"\s+", " ", shown).replace("( ", "(").replace(" )", ")").replace(", )", ")")
            out.append("    " * depth + shown.strip())
            b = balance(sig)
            if kind in ("fun", "val", "var") and b > 0:
                skip_until = depth  # a function body: not API
            depth += b
        else:
            depth += balance(s)
    return out


def cut_top_level(sig, at_equals):
    """Cuts `sig` at its body (`{`) or, for members, its initializer (`=`), outside parens."""
    level = 0
    for j, ch in enumerate(sig):
        if ch in "(<[":
            level += 1
        elif ch in ")]" or (ch == ">" and sig[j - 1:j] != "-"):
            level -= 1
        elif level == 0 and ch == "{":
            return sig[:j]
        elif level == 0 and at_equals and ch == "=" and sig[j - 1:j] == " " and sig[j + 1:j + 2] in (" ", ""):
            return sig[:j]
    return sig


SW_DECL = re.compile(r"^(?:@\w+(?:\([^)]*\))?\s+)*(public|open)\s")
SW_MEMBER = re.compile(r"^(?:(?:static|mutating|async)\s+)*(func|var|init|subscript)\b")


def swift(lines):
    # `public` alone on a line belongs to the next line.
    joined, k = [], 0
    while k < len(lines):
        line = lines[k].strip()
        if line in ("public", "open") and k + 1 < len(lines):
            line = line + " " + lines[k + 1].strip()
            k += 1
        joined.append(line)
        k += 1
    lines = joined
    out, depth, i = [], 0, 0
    enum_depths, proto_depths = [], []
    while i < len(lines):
        s = lines[i]
        i += 1
        if not s:
            continue
        is_decl = SW_DECL.match(s)
        is_case = s.startswith("case ") and enum_depths and depth == enum_depths[-1] + 1
        is_req = SW_MEMBER.match(s) and proto_depths and depth == proto_depths[-1] + 1
        if is_decl or is_case or is_req:
            sig = s
            while sig.count("(") > sig.count(")") and i < len(lines):
                sig += " " + lines[i]
                i += 1
            shown = re.sub(r"\s*\{.*$", "", sig)
            words = re.sub(r"[(<:{].*$", "", shown).split()
            name = words[-1] if words else ""
            if SKIP_NAME.match(name) or "FfiConverter" in shown or "uniffi" in name.lower() \
                    or "NoHandle" in shown or "UniffiWithHandle" in shown:
                b = balance(sig)
                if b > 0:
                    target = depth
                    depth += b
                    while depth > target and i < len(lines):
                        depth += balance(lines[i])
                        i += 1
                continue
            if balance(sig) > 0:
                if re.search(r"\benum\b", shown):
                    enum_depths.append(depth)
                if re.search(r"\bprotocol\b", shown):
                    proto_depths.append(depth)
            shown = re.sub(r"\s+", " ", shown).replace("( ", "(").replace(" )", ")")
            shown = re.sub(r"\)(throws|async)", r") \1", shown)
            out.append("    " * depth + shown.strip())
            depth += balance(sig)
        else:
            depth += balance(s)
        while enum_depths and depth <= enum_depths[-1]:
            enum_depths.pop()
        while proto_depths and depth <= proto_depths[-1]:
            proto_depths.pop()
    return out


def main():
    lang, files = sys.argv[1], sys.argv[2:]
    for f in sorted(files):
        lines = strip_comments(open(f, encoding="utf-8").read())
        body = kotlin(lines) if lang == "kotlin" else swift(lines)
        print(f"// {f.split('/')[-1]}")
        print("\n".join(body))


if __name__ == "__main__":
    main()
