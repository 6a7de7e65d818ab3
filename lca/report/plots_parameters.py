"""Figures of single parameters and units: kernel frames and animations, unit series, curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .style import HELP, LCA_CMAP, ZERO, PlotStyle, layer_colours, symmetric_limit


def _matrix_axes(ax, layer: str, block: tuple[int, int] | None, shape: tuple[int, int]) -> None:
    """Axis labels of a kernel heatmap; convolutions get faint lines between kh × kw blocks."""
    conv = block is not None and block != (1, 1)
    ax.set_xlabel("inputs" + (" (in-channel blocks of kw)" if conv else ""), fontsize=8)
    ax.set_ylabel(f"{layer} outputs" + (" (out-channel blocks of kh)" if conv else ""), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if conv:
        kh, kw = block
        rows, cols = shape
        if rows // kh <= 64 and cols // kw <= 64:  # more lines would hide the weights
            for y in np.arange(kh, rows, kh) - 0.5:
                ax.axhline(y, color="#bdbdbd", lw=0.4)
            for x in np.arange(kw, cols, kw) - 0.5:
                ax.axvline(x, color="#bdbdbd", lw=0.4)


def kernel_frames(
    layer: str,
    iterations: Sequence[int],
    matrices: Sequence[np.ndarray],
    path: str | Path,
    block: tuple[int, int] | None = None,
    *,
    style: PlotStyle,
) -> Path:
    """Fig 2 stills: one layer's LCA heatmap at a few iterations, on one colour scale."""
    n = len(matrices)
    limit = symmetric_limit(np.concatenate([np.ravel(m) for m in matrices]))
    rows, cols = matrices[0].shape
    aspect = cols / max(rows, 1)
    panel_w = 3.6 if aspect > 1.5 else 2.8
    panel_h = min(4.0, max(1.6, panel_w / max(aspect, 0.3)))
    fig = Figure(figsize=(panel_w * n + 1.2, panel_h + 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    norm = Normalize(-limit, limit)
    image = None
    for ax, it, m in zip(axes, iterations, matrices):
        image = ax.imshow(m, cmap=LCA_CMAP, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_title(f"iteration {it}", fontsize=9)
        _matrix_axes(ax, layer, block, m.shape)
    style.colour_bar(fig, image, axes.tolist(), limit)
    fig.suptitle(f"LCA of {layer}'s kernel at single iterations (green = helped, red = hurt)")
    return style.save(fig, path)


def kernel_animation(
    layers: Sequence[str],
    iterations: Sequence[int],
    matrices: Mapping[str, Sequence[np.ndarray]],
    path: str | Path,
    blocks: Mapping[str, tuple[int, int] | None] | None = None,
    fps: int = 4,
    *,
    style: PlotStyle,
) -> Path:
    """Fig 2 animated: every shown layer's LCA heatmap, one frame per chosen iteration."""
    _, frames = kernel_animation_frames(layers, iterations, matrices, blocks, style=style)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def kernel_animation_frames(
    layers: Sequence[str],
    iterations: Sequence[int],
    matrices: Mapping[str, Sequence[np.ndarray]],
    blocks: Mapping[str, tuple[int, int] | None] | None = None,
    dpi: int = 60,
    *,
    style: PlotStyle,
) -> tuple[Figure, list]:
    """The animation's figure and its frames (RGB ``PIL.Image``), one per iteration.

    The figure is laid out and drawn once; each frame redraws only the heatmaps, what lies
    over them and the title on a copy of the rest: the frames are, pixel for pixel, what a
    full draw of each makes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    blocks = blocks or {}
    n = len(layers)
    cols = 2 if n == 4 else min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.4 * cols + 0.6, 2.9 * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    images = []
    for ax, layer in zip(axes, layers):
        frames = matrices[layer]
        limit = symmetric_limit(np.concatenate([np.ravel(m) for m in frames]))
        image = ax.imshow(
            frames[0], cmap=LCA_CMAP, norm=Normalize(-limit, limit), aspect="auto",
            interpolation="nearest",
        )  # fmt: skip
        _matrix_axes(ax, layer, blocks.get(layer), frames[0].shape)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.ax.yaxis.get_offset_text().set_fontsize(6)
        bar.set_label(f"LCA ({style.loss_unit})", fontsize=7)
        images.append(image)
    for ax in axes[n:]:
        ax.set_visible(False)
    title = fig.suptitle(f"LCA per weight, iteration {iterations[-1]} (green = helped, red = hurt)")
    fig.draw_without_rendering()  # lay out once, then freeze: frames differ only in data
    fig.set_layout_engine("none")
    # Per frame: the heatmaps and what a full draw puts over them (ticks, block lines, the
    # axes' frame), in the full draw's order, on a copy of everything else.
    dynamic = [
        sorted(
            [image, ax.xaxis, ax.yaxis, *ax.lines, *ax.spines.values()], key=attrgetter("zorder")
        )
        for ax, image in zip(axes, images)
    ]
    animated = [title, *(a for artists in dynamic for a in artists)]
    for artist in animated:
        artist.set_animated(True)
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # everything but the animated artists
    background = canvas.copy_from_bbox(fig.bbox)
    pictures = []
    for k, it in enumerate(iterations):
        canvas.restore_region(background)
        for ax, image, layer, artists in zip(axes, images, layers, dynamic):
            image.set_data(matrices[layer][k])
            for artist in artists:
                if artist.get_visible():
                    ax.draw_artist(artist)
        title.set_text(f"LCA per weight, iteration {it} (green = helped, red = hurt)")
        fig.draw_artist(title)
        rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
        pictures.append(rgba.convert("RGB"))  # opaque: converts to a GIF palette best
    for artist in animated:
        artist.set_animated(False)
    return fig, pictures


def unit_series(
    layers: Sequence[str],
    series: Sequence[np.ndarray],
    path: str | Path,
    kinds: Sequence[str] | None = None,
    *,
    style: PlotStyle,
) -> Path:
    """S1: which units (neurons, channels, heads, tokens) learn when: their LCA per iteration."""
    n = len(layers)
    fig = Figure(figsize=(9, 0.6 + 2.2 * n), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    kinds = kinds or ["unit"] * n
    for ax, layer, s, kind in zip(axes, layers, series, kinds):
        s = np.asarray(s, dtype=np.float64)
        limit = symmetric_limit(s)
        image = ax.imshow(
            s.T, cmap=LCA_CMAP, norm=Normalize(-limit, limit), aspect="auto",
            interpolation="nearest", extent=(-0.5, s.shape[0] - 0.5, s.shape[1] - 0.5, -0.5),
        )  # fmt: skip
        ax.set_ylabel(f"{layer}\n{kind}", fontsize=8)
        ax.tick_params(labelsize=7)
        style.colour_bar(fig, image, ax, limit, short=True)
    axes[-1].set_xlabel("iteration")
    fig.suptitle(
        "LCA per unit (a neuron's or channel's incoming weights and bias, a head's or "
        "token's weights, summed), per iteration\n"
        "green = helped, red = hurt, white = 0; each row's colours clipped at its 99th "
        "percentile of |LCA|",
        fontsize=10,
    )
    return style.save(fig, path)


def parameter_curves(
    layers: Sequence[str],
    curves: Sequence[Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    style: PlotStyle,
) -> Path:
    """S2: a few parameters do much of the helping, and they do it early."""
    n = len(layers)
    fig = Figure(figsize=(6.0 * min(n, 2), 4.0 * (-(-n // 2))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(-(-n // 2), min(n, 2), squeeze=False)).ravel()
    for ax, layer, c in zip(axes, layers, curves):
        helpful, random = np.asarray(c["helpful"]), np.asarray(c["random"])
        t = np.arange(1, helpful.shape[0] + 1)
        if random.size:
            ax.plot(t, random, color="#737373", lw=0.6, alpha=0.6)
        if helpful.size:
            ax.plot(t, helpful, color=HELP, lw=0.7, alpha=0.8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(
            f"{layer}: {helpful.shape[1]} most helpful (green), {random.shape[1]} random (grey)",
            fontsize=9,
        )
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"cumulative LCA ({style.loss_unit})")
        ax.set_xlim(0, t[-1] if t.size else 1)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Cumulative LCA of single parameters (below 0 = helped)")
    return style.save(fig, path)


def neuron_view(
    layer: str,
    unit: int,
    class_curves: np.ndarray,
    input_lca: np.ndarray,
    path: str | Path,
    *,
    style: PlotStyle,
) -> Path:
    """S22: a neuron's cumulative LCA by class, and its input weights' total LCA as an image.

    ``class_curves`` is (T, C), cumulative over iterations; ``input_lca`` is (H, W).
    """
    fig = Figure(figsize=(12, 4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1], "wspace": 0.45})
    colours = layer_colours(class_curves.shape[1])
    for c in range(class_curves.shape[1]):
        left.plot(class_curves[:, c], color=colours[c], lw=1.2, label=f"class {c}")
    left.axhline(0, color=ZERO, lw=0.8, ls=":")
    left.set_xlabel("iteration")
    left.set_ylabel(f"cumulative LCA ({style.loss_unit}); below 0 = helped")
    left.set_title(f"{layer} unit {unit}: cumulative LCA by class", fontsize=10)
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    limit = symmetric_limit(input_lca)
    image = right.imshow(input_lca, cmap=LCA_CMAP, norm=Normalize(-limit, limit))
    right.set_title("its input weights' total LCA", fontsize=10)
    right.set_xticks([])
    right.set_yticks([])
    style.colour_bar(fig, image, right, limit, short=True)
    return style.save(fig, path)
