"""A parameter layout in words: the layer table ``lca describe`` prints (pure Python)."""

from __future__ import annotations


def _short_name(name: str, layer: str) -> str:
    """``conv_1/kernel`` -> ``kernel`` inside the conv_1 row; a BN's variables keep their path."""
    return name[len(layer) + 1 :] if name.startswith(layer + "/") else name


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def describe_layout(layout) -> str:
    """A table of layer groups, their variables, units, counts and shares: ``lca describe``.

    The units are what per-unit LCA (``allocate.store: units``, the report's unit views)
    sums over: attention heads, MLP neurons, channels, embedding rows.
    """
    total = layout.total
    rows = []
    units = layout.unit_index()
    for layer in layout.layers:
        entries = [e for e in layout.entries if e.layer == layer]
        variables = ", ".join(
            f"{_short_name(e.name, layer)} {_shape_text(e.shape)}" for e in entries
        )
        count = sum(e.size for e in entries)
        share = 100.0 * count / total if total else 0.0
        rows.append(
            (
                layer,
                variables,
                _units_text(layout, layer, units[layer][2]),
                f"{count:,}",
                f"{share:.1f}%",
            )
        )
    header = ("layer", "variables", "units", "params", "share")
    footer = ("total", f"{len(layout.entries)} variables", "", f"{total:,}", "100.0%")
    table = [header, *rows, footer]
    widths = [max(len(r[i]) for r in table) for i in range(5)]

    def fmt(r: tuple[str, ...]) -> str:
        left = f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}"
        return f"{left}  {r[3]:>{widths[3]}}  {r[4]:>{widths[4]}}".rstrip()

    rule = "-" * (sum(widths) + 8)
    return "\n".join([fmt(header), rule, *map(fmt, rows), rule, fmt(footer)])


def _units_text(layout, layer: str, count: int) -> str:
    """``4 heads``, ``256 neurons + shared``, ``10 units``."""
    labels = layout.unit_labels(layer)
    shared = labels[-1] == "shared"
    n = count - int(shared)
    kind = layout.kind_of_units(layer)
    text = f"{n} {kind}{'s' * (n != 1)}"
    return text + " + shared" if shared else text
