"""MkDocs hook: the configuration reference, generated from the config dataclasses.

A page containing the marker ``<!-- lca:config-reference -->`` gets, in its place, one section
per config section and one table row per key: the key's dotted path, its type, its default
and its meaning, read from the field's trailing ``# comment`` (or the comment block just
above it) in the dataclass's source. Sections are found by walking the fields of the
top-level ``Config`` dataclass recursively, so a new key or section appears without editing
the docs; only the import below names where the dataclasses live.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, Union

CONFIG_MODULE = "lca.config"  # the dataclasses' public import path: the one line to change
ROOT = "Config"
MARKER = "<!-- lca:config-reference -->"

# Meanings for keys whose source has no comment. A key named here that no longer exists
# fails the build, so this list cannot outlive the code it describes.
EXTRA = {
    "name": "run name; names the run directory `runs/<name>` (default: the config file's stem)",
    "model.name": "built-in network (ignored with `model.builder`)",
    "model.loss": "loss whose change is allocated (`mean_squared_error` needs `model.builder`)",
    "model.hidden_units": "hidden layer widths",
    "model.conv_filters": "filters of the two convolutions",
    "model.dense_units": "width of the dense layer after the convolutions",
    "model.widths": "channel widths per stage",
    "model.blocks_per_stage": "residual blocks per stage",
    "model.num_layers": "transformer blocks",
    "model.d_model": "width of the residual stream",
    "model.num_heads": "attention heads per block (head size d_model / num_heads)",
    "model.d_mlp": "hidden neurons of each block's MLP",
    "data.name": "built-in dataset (ignored with `data.builder`)",
    "data.synthetic": "settings of `data.name: synthetic`",
    "data.modular": "settings of `data.name: modular`",
    "data.synthetic.image_shape": "[height, width, channels] of each image",
    "data.synthetic.num_classes": "number of classes",
    "data.synthetic.num_examples": "examples generated (before the validation split)",
    "data.synthetic.noise": "standard deviation of the noise added to each class template",
    "data.synthetic.seed": "seed of the templates and the noise",
    "data.modular.p": "the modulus (a prime); the pairs are (a, b) in 0..p−1",
    "data.modular.operation": "a ∘ b: a + b, a − b, a · b⁻¹ or a² + ab + b² + a",
    "data.modular.train_fraction": "share of all pairs in the training split",
    "optimizer.name": "optimiser",
    "optimizer.lr": "learning rate",
    "optimizer.layers": "per-layer settings, keyed by the layer names `lca describe` prints",
    "optimizer.layers.<layer>.lr": "this layer's learning rate",
    "optimizer.layers.<layer>.momentum": "this layer's momentum (sgd only)",
    "training.iterations": "optimiser steps to train and record",
    "training.batch_size": "mini-batch size, or `full` for full-batch steps",
    "training.seed": "seed of initialisation, batch order and dropout",
    "allocate.splits": "the splits whose loss change is allocated",
    "allocate.eval_batch_size": "size of the fixed evaluation batches (batch norm: their stats)",
    "allocate.threshold": "per-iteration |conservation error| that triggers halving the step",
    "allocate.jit_compile": "compile the gradient function with XLA",
    "allocate.subset_seed": "seed of the subset drawn by `subset_size`",
    "allocate.per_class_full": "also keep the full (T, classes, K) per-class array",
}


@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    meaning: str


@dataclasses.dataclass
class Section:
    path: str  # "" for the top level
    cls: type
    rows: list[Row]


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing comment, else the comment lines just above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    body = ast.parse(source).body[0]
    out: dict[str, str] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = [
            comments[n]
            for n in range(node.lineno, node.end_lineno + 1)
            if n in comments and lines[n - 1].split("#", 1)[0].strip()
        ]
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        out[node.target.id] = " ".join(trailing or above)
    return out


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        parts = [_type_text(a) for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp):
            parts.append("`null`")
        return " \\| ".join(parts)
    if origin is list:
        return f"list of {_type_text(typing.get_args(tp)[0])}"
    if origin is dict:
        value = typing.get_args(tp)[1]
        inner = "section" if dataclasses.is_dataclass(value) else _type_text(value)
        return f"mapping of name → {inner}"
    if dataclasses.is_dataclass(tp):
        return "section"
    return {int: "int", float: "float", str: "string", bool: "bool"}.get(tp, str(tp))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "see below"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        text = repr(value).replace("'", "")
        return f"`{text}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    text = text.replace("``", "`").replace("|", "\\|").replace("\n", " ")
    return DOCS_PATH.sub(_link, text)


# a comment's "docs/storage.md#store-levels" becomes a link from reference/configuration.md
DOCS_PATH = re.compile(r"\bdocs/([\w/-]+)\.md(?:#([\w-]+))?")


def _link(match: re.Match) -> str:
    page, anchor = match.group(1), match.group(2)
    words = (anchor or page.rsplit("/", 1)[-1]).replace("-", " ")
    return f"[{words}](../{page}.md{'#' + anchor if anchor else ''})"


def sections(module_name: str = CONFIG_MODULE) -> list[Section]:
    """The config's sections, depth first from the top-level dataclass."""
    module = importlib.import_module(module_name)
    found: list[Section] = []

    def walk(cls: type, path: str) -> None:
        hints = typing.get_type_hints(cls)
        comments = _field_comments(cls)
        section = Section(path, cls, [])
        found.append(section)
        nested: list[tuple[type, str]] = []
        for f in dataclasses.fields(cls):
            key = f"{path}.{f.name}" if path else f.name
            tp = hints[f.name]
            meaning = " — ".join(m for m in (EXTRA.get(key, ""), comments.get(f.name, "")) if m)
            section.rows.append(Row(key, _type_text(tp), _default_text(f), meaning))
            if dataclasses.is_dataclass(tp):
                nested.append((tp, key))
            elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
                nested.append((typing.get_args(tp)[1], f"{key}.<{_item_name(key)}>"))
        for child, child_path in nested:
            walk(child, child_path)

    walk(getattr(module, ROOT), "")
    keys = {row.key for s in found for row in s.rows}
    stale = sorted(set(EXTRA) - keys)
    if stale:
        raise ValueError(f"docs/hooks/config_reference.py: EXTRA names unknown keys {stale}")
    return found


def _item_name(key: str) -> str:
    return "layer" if key.endswith("layers") else "name"


def _docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    # rST literals (``x``) read as Markdown code spans already; keep paragraphs
    return doc.replace("``", "`")


def render(module_name: str = CONFIG_MODULE) -> str:
    out: list[str] = []
    for s in sections(module_name):
        title = s.path or "top level"
        anchor = (s.path or "top-level").replace(".", "-").replace("<", "").replace(">", "")
        out += [f"## `{title}` {{ #{anchor} }}", ""]
        doc = _docstring(s.cls)
        if doc:
            out += [doc, ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for r in s.rows:
            out.append(f"| `{r.key}` | {r.type} | {r.default} | {_cell(r.meaning)} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs hook
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
