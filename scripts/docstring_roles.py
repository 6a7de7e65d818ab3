"""Rewrite the Sphinx roles in lca's docstrings as mkdocstrings cross-references.

The API reference (docs/reference/api.md) is rendered by mkdocstrings from Markdown
docstrings, where a Sphinx role such as ``:func:`train``` shows up verbatim. This script
replaces every role (``:mod:``, ``:func:``, ``:class:``, ``:data:``, ``:meth:``, ``:attr:``,
``:obj:``, ``:exc:``) inside a docstring by

* ``[`text`][lca.absolute.path]``, a link, when the site documents the target (its
  identifier is in the built site's ``objects.inv``), or
* ``` `text` ```, a code span, when it does not (an internal module, a private helper),
  so that ``mkdocs build --strict`` finds no reference it cannot resolve.

Targets are resolved the way Sphinx would read them, statically with griffe (nothing is
imported): ``.x`` relative to the docstring's package (``..x`` one level up), a bare name
in the enclosing class, then in the module (following its imports), then as an absolute
path. ``~`` shows only the last component; ``text <target>`` keeps the text.

Usage::

    python -m mkdocs build -d site                        # objects.inv: what the site documents
    python scripts/docstring_roles.py --inventory site/objects.inv lca/   # rewrite in place
    python scripts/docstring_roles.py --check lca/         # exit 1 if a role is left

``--check`` rewrites nothing: it lists every role still in a docstring, and every target that
cannot be resolved, and exits with status 1 if there is one.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>mod|func|class|data|meth|attr|obj|exc):"
    r"`(?P<tilde>~?)(?P<body>[^`]+?)`"
)
EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^>]+)>$", re.DOTALL)


@dataclass
class Docstring:
    """A docstring's place in the source and the object it documents."""

    start: int  # character offsets of the string literal in the file
    end: int
    module: str  # lca.allocation.store
    scope: str  # the innermost class or function, as a dotted path ("" for the module)
    line: int


@dataclass
class Role:
    file: Path
    line: int
    source: str  # the role as written
    target: str | None  # the absolute path it resolves to, None if it resolves to nothing


def module_name(path: Path, package_root: Path) -> str:
    """lca/allocation/store.py -> lca.allocation.store; lca/x/__init__.py -> lca.x."""
    parts = list(path.resolve().relative_to(package_root.resolve()).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def docstrings(source: str, module: str) -> list[Docstring]:
    """Every string that is a statement of its own: module, class, function and attribute
    docstrings, with the class or function it sits in."""
    offsets = [0]
    for line in source.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))

    def offset(line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        text = source[offsets[line - 1] : offsets[line]]
        return offsets[line - 1] + len(text.encode()[:col].decode())

    found: list[Docstring] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.Expr)
                and isinstance(child.value, ast.Constant)
                and isinstance(child.value.value, str)
            ):
                v = child.value
                found.append(
                    Docstring(
                        offset(v.lineno, v.col_offset),
                        offset(v.end_lineno, v.end_col_offset),
                        module,
                        ".".join(scope),
                        v.lineno,
                    )
                )
            inner = scope
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [*scope, child.name]
            visit(child, inner)

    visit(ast.parse(source), [])
    return found


class Resolver:
    """Dotted names to absolute paths, through griffe's static view of the package."""

    def __init__(self, package: griffe.Module, modules: set[str]):
        self.package = package
        self.modules = modules  # the package's module paths, to tell a package from a module

    def lookup(self, path: str) -> str | None:
        """Where ``path`` is defined, if it names something in the package."""
        root = self.package.path
        if path == root:
            return root
        if not path.startswith(root + "."):
            return None
        try:
            obj = self.package.get_member(path[len(root) + 1 :])
            if obj.is_alias:  # an import: where it is defined (the site knows that path too)
                return obj.final_target.path
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        return obj.path

    def resolve(self, target: str, doc: Docstring) -> str | None:
        if target.startswith("."):
            dots = len(target) - len(target.lstrip("."))
            base = doc.module if doc.module in self.packages() else doc.module.rpartition(".")[0]
            for _ in range(dots - 1):
                base = base.rpartition(".")[0]
            return self.lookup(f"{base}.{target[dots:]}")
        scopes = []
        if doc.scope:
            parts = doc.scope.split(".")
            scopes += [".".join([doc.module, *parts[:k]]) for k in range(len(parts), 0, -1)]
        scopes.append(doc.module)
        for scope in scopes:
            found = self.lookup(f"{scope}.{target}")
            if found:
                return found
        return self.lookup(target)

    def packages(self) -> set[str]:
        return {m for m in self.modules if any(o.startswith(m + ".") for o in self.modules)}


def inventory(path: Path) -> set[str]:
    """The Python identifiers a built site documents (its Sphinx-format objects.inv)."""
    header_lines = 4
    raw = path.read_bytes().split(b"\n", header_lines)
    body = zlib.decompress(raw[header_lines]).decode()
    return {line.split()[0] for line in body.splitlines() if " py:" in line}


def rewrite(
    text: str,
    docs: list[Docstring],
    resolver: Resolver,
    documented: set[str] | None,
    file: Path,
    width: int = 100,
) -> tuple[str, list[Role]]:
    """The file with its docstrings' roles replaced, and every role found."""
    roles: list[Role] = []
    pieces, last = [], 0
    for doc in docs:
        segment = text[doc.start : doc.end]

        def replace(match: re.Match, doc: Docstring = doc, segment: str = segment) -> str:
            body = " ".join(match["body"].split())
            explicit = EXPLICIT.match(body)
            shown, target = (explicit["text"], explicit["target"]) if explicit else (None, body)
            target = target.strip().removesuffix("()")
            path = resolver.resolve(target, doc)
            line = doc.line + segment[: match.start()].count("\n")
            roles.append(Role(file, line, match.group(0), path))
            if shown is None:
                shown = target.rpartition(".")[2] if match["tilde"] else target.lstrip(".")
            if path is not None and documented is not None and path in documented:
                return f"[`{shown}`][{path}]"
            return f"`{shown}`"

        # the text before the literal on its first line, so that the wrap sees whole lines
        prefix = text[text.rfind("\n", 0, doc.start) + 1 : doc.start]
        wrapped = _wrap(prefix + ROLE.sub(replace, segment), prefix + segment, width)
        pieces += [text[last : doc.start], wrapped[len(prefix) :]]
        last = doc.end
    pieces.append(text[last:])
    return "".join(pieces), roles


def _wrap(new: str, old: str, width: int) -> str:
    """Lines the rewrite made longer than ``width`` broken at spaces, keeping their indent
    (a Markdown paragraph reads the same)."""
    unchanged = set(old.splitlines())
    out = []
    for line in new.splitlines(keepends=True):
        body = line.rstrip("\n")
        if len(body) <= width or body in unchanged:
            out.append(line)
            continue
        indent = body[: len(body) - len(body.lstrip())]
        wrapped = textwrap.wrap(
            body.strip(), width, initial_indent=indent, subsequent_indent=indent,
            break_long_words=False, break_on_hyphens=False,
        )  # fmt: skip
        out.append("\n".join(wrapped) + line[len(body) :])
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("lca")])
    parser.add_argument(
        "--check", action="store_true", help="rewrite nothing; exit 1 if a role is left"
    )
    parser.add_argument(
        "--inventory", type=Path, help="the built site's objects.inv: which targets become links"
    )
    parser.add_argument(
        "--package-root", type=Path, help="the folder holding the package (default: the paths' top)"
    )
    parser.add_argument(
        "--line-length", type=int, default=100, help="wrap lines the rewrite makes longer"
    )
    args = parser.parse_args(argv)
    files = sorted(f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    if not files:
        parser.error("no Python files under the given paths")
    root = args.package_root or _package_root(files[0])
    name = module_name(files[0], root).split(".")[0]
    package = griffe.load(name, search_paths=[str(root)], resolve_aliases=False)
    modules = {module_name(f, root) for f in (root / name).rglob("*.py")}
    resolver = Resolver(package, modules)
    if not args.check and args.inventory is None:
        parser.error("--inventory site/objects.inv is needed to rewrite (build the site first)")
    documented = inventory(args.inventory) if args.inventory else None
    found: list[Role] = []
    for file in files:
        text = file.read_text()
        docs = docstrings(text, module_name(file, root))
        new, roles = rewrite(text, docs, resolver, documented, file, args.line_length)
        found += roles
        if not args.check and new != text:
            file.write_text(new)
    unresolved = [r for r in found if r.target is None]
    for r in unresolved:
        print(f"{r.file}:{r.line}: {r.source} names nothing in {name}", file=sys.stderr)
    if args.check:
        for r in found:
            print(f"{r.file}:{r.line}: {r.source} -> {r.target or '?'}")
        print(f"{len(found)} Sphinx roles left in docstrings", file=sys.stderr)
        return 1 if found else 0
    links = sum(1 for r in found if r.target in (documented or set()))
    print(
        f"{len(found)} roles rewritten in {len({r.file for r in found})} files: {links} links, "
        f"{len(found) - links} code spans ({len(unresolved)} of them resolve to nothing)",
        file=sys.stderr,
    )
    return 0


def _package_root(file: Path) -> Path:
    """The folder above the outermost package (the first folder without __init__.py)."""
    folder = file.resolve().parent
    while (folder / "__init__.py").exists():
        folder = folder.parent
    return folder


if __name__ == "__main__":
    sys.exit(main())
