#!/usr/bin/env python3
"""
check_includes.py - the dependency rules between mlaserve's source files,
checked from the sources alone (python3 standard library, no compiler):

  (a) no circle between the files of one component folder. A file depends on
      another when it includes it (project headers, resolved by name), or when
      a .c/.cu file uses a function or global that another .c/.cu file of the
      same folder defines (found by grep: non-static definitions at column 0).
      So "A's functions used by B and B's by A" is a circle even when both
      include one shared internal header;
  (b) nothing under node/, prefill_node/ or decode_node/ includes a header
      from router/ (the nodes do not know the router's internals);
  (c) prefill_node/ and decode_node/ do not include each other (the roles
      share node/, not each other);
  (d) a component includes only the components below it (LAYERS: what each
      folder's entry header says it may include). tools/, bench/ and tests/
      put components together and may include any.

Usage: tools/check_includes.py [ROOT]   (ROOT defaults to the repository)
Prints every violation with the files and symbols that make it; exits 1 when
there is one, 0 otherwise. Run by ctest as test_check_includes.
"""
import os
import re
import sys

SKIP_DIRS = {"build", ".git", "fixtures"}
SRC_EXT = (".c", ".cu")
HDR_EXT = (".h", ".cuh")
NODE_DIRS = ("node", "prefill_node", "decode_node")
ROLE_DIRS = ("prefill_node", "decode_node")
# component -> the components its files may include (besides its own)
LAYERS = {
    "common": set(),
    "http": {"common"},
    "proto": {"common"},
    "tokenizer": {"common"},
    "transport": {"common"},
    "kernels/cpu": {"common"},
    "kernels/cuda": {"common", "kernels/cpu"},
    "engine": {"common", "kernels/cpu", "kernels/cuda"},
    "node": {"common", "http", "proto", "transport", "engine"},
    "prefill_node": {"common", "http", "proto", "transport", "engine", "node"},
    "decode_node": {"common", "http", "proto", "transport", "engine", "node"},
    "router": {"common", "http", "proto", "tokenizer"},
}
COMPOSERS = ("tools", "bench", "tests")


def component(path):
    parts = path.split(os.sep)
    return os.sep.join(parts[:2]) if parts[0] == "kernels" and len(parts) > 2 else parts[0]

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
COMMENT_RE = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
STRING_RE = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
IDENT_RE = re.compile(r"\b[A-Za-z_]\w*\b")
# A definition at file scope starts at column 0: "type name(" ... ") {", or a
# global "type name[...] = ..." / "type name;". Statics are private to the file.
FUNC_RE = re.compile(r"^(?!static\b|extern\b|typedef\b|#)[A-Za-z_][\w \t\*]*?\b([A-Za-z_]\w*)\s*\(", re.M)
VAR_RE = re.compile(
    r"^(?!static\b|extern\b|typedef\b|#|return\b)(?:const\s+)?[A-Za-z_][\w \t\*]*?\s\**([A-Za-z_]\w*)"
    r"\s*(?:\[[^\]]*\])*\s*(?:=|;)", re.M)
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "do", "else", "case"}


def strip_code(text):
    """Source without comments and string/char literals (newlines kept)."""
    text = COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return STRING_RE.sub('""', text)


def matching_paren(text, i):
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j
    return -1


def defined_symbols(code):
    """Non-static functions and globals a source file defines."""
    syms = set()
    for m in FUNC_RE.finditer(code):
        name = m.group(1)
        if name in KEYWORDS:
            continue
        close = matching_paren(code, m.end() - 1)
        rest = code[close + 1:close + 200].lstrip() if close >= 0 else ""
        if rest.startswith("{"):
            syms.add(name)
    for m in VAR_RE.finditer(code):
        if m.group(1) not in KEYWORDS:
            syms.add(m.group(1))
    return syms


def scan(root):
    files = {}  # relative path -> stripped code
    includes = {}  # relative path -> [included names]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if not f.endswith(SRC_EXT + HDR_EXT):
                continue
            path = os.path.relpath(os.path.join(dirpath, f), root)
            with open(os.path.join(root, path), encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            includes[path] = INCLUDE_RE.findall(COMMENT_RE.sub("", text))
            files[path] = strip_code(text)
    return files, includes


def resolve(path, name, by_base):
    """The project file an #include "name" in `path` refers to, or None."""
    here = os.path.normpath(os.path.join(os.path.dirname(path), name))
    if here in by_base.get(os.path.basename(name), []):
        return here
    cands = by_base.get(os.path.basename(name), [])
    if len(cands) == 1:
        return cands[0]
    return None  # system header, generated header (mlaserve.pb-c.h) or ambiguous


def cycles(nodes, edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), ".."))
    files, includes = scan(root)
    by_base = {}
    for p in files:
        by_base.setdefault(os.path.basename(p), []).append(p)
    problems = []

    # edges: path -> {path: why}
    edges = {p: {} for p in files}
    for p, names in includes.items():
        for n in names:
            t = resolve(p, n, by_base)
            if t is not None and t != p:
                edges[p].setdefault(t, "includes %s" % os.path.basename(t))

    # symbol uses between the sources of one folder
    folders = {}
    for p in files:
        folders.setdefault(os.path.dirname(p), []).append(p)
    for folder, members in folders.items():
        srcs = [p for p in members if p.endswith(SRC_EXT)]
        owner = {}
        for p in srcs:
            for s in defined_symbols(files[p]):
                owner.setdefault(s, []).append(p)
        # a name defined by several sources (main, or one helper per test
        # program) belongs to separate programs, not to a shared API
        owner = {s: ps for s, ps in owner.items() if len(ps) == 1}
        for p in srcs:
            used = set(IDENT_RE.findall(files[p]))
            for s in sorted(used):
                for q in owner.get(s, ()):
                    if q == p:
                        continue
                    why = edges[p].get(q)
                    if why is None or not why.startswith("uses"):
                        edges[p][q] = "uses " + s
                    elif len(why) < 120:
                        edges[p][q] = why + ", " + s

    # (a) circles inside a folder
    for folder, members in sorted(folders.items()):
        inner = {p: {q for q in edges[p] if os.path.dirname(q) == folder} for p in members}
        for comp in cycles(members, inner):
            lines = ["(a) circle between the files of %s/:" % folder]
            for p in comp:
                for q in sorted(inner[p]):
                    if q in comp:
                        lines.append("      %s -> %s (%s)" % (p, q, edges[p][q]))
            problems.append("\n".join(lines))

    # (b) nodes include nothing from router/, (c) the roles not each other
    for p, names in sorted(includes.items()):
        top = p.split(os.sep)[0]
        for n in names:
            t = resolve(p, n, by_base)
            if t is None:
                continue
            ttop = t.split(os.sep)[0]
            if top in NODE_DIRS and ttop == "router":
                problems.append("(b) %s includes %s from router/" % (p, t))
            if top in ROLE_DIRS and ttop in ROLE_DIRS and ttop != top:
                problems.append("(c) %s includes %s from %s/" % (p, t, ttop))
            comp, tcomp = component(p), component(t)
            if comp != tcomp and comp not in COMPOSERS:
                if comp not in LAYERS:
                    problems.append("(d) %s: component %s/ has no entry in LAYERS" % (p, comp))
                elif tcomp not in LAYERS[comp]:
                    problems.append("(d) %s includes %s: %s/ may include only %s" %
                                    (p, t, comp, ", ".join(sorted(LAYERS[comp])) or "itself"))

    for msg in problems:
        print(msg)
    n_src = sum(1 for p in files if p.endswith(SRC_EXT))
    print("check_includes: %d files (%d sources) in %d folders: %s" %
          (len(files), n_src, len(folders),
           "%d problem(s)" % len(problems) if problems else "no circles, no forbidden includes"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
