"""Plots shared by the lessons, in one style, with a font that renders Chinese tokens."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator
import numpy as np
from numpy.typing import ArrayLike
from matplotlib import font_manager

if TYPE_CHECKING:
    from torch import nn

FONT_PATH = Path(__file__).parent / "fonts" / "NotoSansSC-course-subset.otf"


def _as_uint8(images: ArrayLike) -> np.ndarray:
    """uint8 images stay as they are; float images in [0, 1] become uint8."""
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else (np.clip(images, 0, 1) * 255).astype(np.uint8)


def use_course_style() -> None:
    """Register the shipped CJK font as a fallback and set the book's figure defaults."""
    font_manager.fontManager.addfont(str(FONT_PATH))
    cjk = font_manager.FontProperties(fname=str(FONT_PATH)).get_name()
    # Matplotlib falls back glyph by glyph along this list: Latin text keeps DejaVu Sans,
    # Chinese characters come from the CJK font, so no glyph renders as an empty box.
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", cjk]
    matplotlib.rcParams["axes.unicode_minus"] = False
    matplotlib.rcParams["figure.figsize"] = (6.4, 3.8)  # fits the book's text column
    matplotlib.rcParams["figure.dpi"] = 100
    matplotlib.rcParams["axes.grid"] = False
    matplotlib.rcParams["axes.spines.top"] = False
    matplotlib.rcParams["axes.spines.right"] = False


def attention_heatmap(weights: ArrayLike, query_labels: Sequence[str], key_labels: Sequence[str],
                      ax: Axes | None = None, title: str = "Attention weights",
                      annotate: bool = True, vmax: float = 1.0) -> AxesImage:
    """Heatmap of a (queries, keys) attention-weight matrix: row i says where query i looks.
    Weights are probabilities, so every heatmap shares one colour scale, 0 to ``vmax`` (1 by
    default): the same colour means the same weight in every panel. Returns the image, for
    ``fig.colorbar``."""
    weights = np.asarray(weights, dtype=float)
    ax = ax or plt.gca()
    im = ax.imshow(weights, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(key_labels)), key_labels)
    ax.set_yticks(range(len(query_labels)), query_labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    if annotate:
        for i in range(weights.shape[0]):
            for j in range(weights.shape[1]):
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center",
                        color="white" if weights[i, j] < 0.6 * vmax else "black", fontsize=8)
    return im


def show_images(images: ArrayLike, titles: Sequence[str] | None = None, ncols: int = 8,
                scale: float = 1.1, suptitle: str | None = None) -> Figure:
    """Show a grid of (N, 3, H, W) images (uint8, or float in [0, 1])."""
    images = _as_uint8(images)
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.15),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(images[i].transpose(1, 2, 0), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_patch_sequence(image: ArrayLike, patch_size: int = 4, per_line: int = 16,
                        suptitle: str | None = None) -> Figure:
    """One (3, H, W) image (uint8, or float in [0, 1]) cut into patch_size x patch_size patches:
    on the left the image with the patch grid, on the right the same patches read row by row as
    a sequence of tokens, ``per_line`` tokens to a line with a white gap between tokens."""
    img = _as_uint8(image).transpose(1, 2, 0)  # (H, W, 3)
    P, (H, W) = patch_size, img.shape[:2]
    n, step = (H // P) * (W // P), patch_size + 1
    lines = -(-n // per_line)
    strip = np.full((lines * step - 1, per_line * step - 1, 3), 255, np.uint8)
    for p in range(n):
        (r, c), (sr, sc) = divmod(p, W // P), divmod(p, per_line)
        strip[sr * step : sr * step + P, sc * step : sc * step + P] = img[r * P : (r + 1) * P, c * P : (c + 1) * P]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.2), gridspec_kw={"width_ratios": [1, 2.4]})
    ax1.imshow(img)
    for k in range(0, H + 1, P):
        ax1.axhline(k - 0.5, color="white", lw=0.8)
    for k in range(0, W + 1, P):
        ax1.axvline(k - 0.5, color="white", lw=0.8)
    ax1.set_xticks(range(0, W, 8))
    ax1.set_yticks(range(0, H, 8))
    ax1.set_xlabel("x (pixels)")
    ax1.set_ylabel("y (pixels)")
    ax1.set_title(f"{H // P} × {W // P} patches of {P} × {P} pixels")
    ax2.imshow(strip)
    ax2.set_xticks([sc * step + (P - 1) / 2 for sc in range(0, per_line, 5)],
                   [f"+{sc}" for sc in range(0, per_line, 5)])
    ax2.set_yticks([sr * step + (P - 1) / 2 for sr in range(lines)],
                   [f"{per_line * sr}–{min(per_line * (sr + 1), n) - 1}" for sr in range(lines)])
    ax2.set_xlabel(f"position within a line of {per_line} tokens")
    ax2.set_ylabel("token index")
    ax2.set_title(f"read row by row, they become a sequence of {n} tokens")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_token_windows(image: ArrayLike, windows: Mapping[str, Callable[[int], tuple[int, int]]],
                       row: int = 3, cols: Sequence[int] = (3, 4), grid: int = 8,
                       suptitle: str | None = None) -> Figure:
    """The pixels that neighbouring tokens see, one panel per tokenizer. ``windows`` maps a
    tokenizer's name to a function from a token's grid row to the (first, last) pixel rows it
    sees (the same function serves columns; ``ConvTokenizer.token_window`` is one). The tokens
    at grid position (row, col), col in ``cols``, are drawn as rectangles over the (3, H, W)
    image; ``grid`` tokens to a grid row give their index in the sequence."""
    from matplotlib.patches import Rectangle

    img = _as_uint8(image).transpose(1, 2, 0)
    fig, axes = plt.subplots(1, len(windows), figsize=(4 * len(windows), 3.6), squeeze=False)
    styles = [("yellow", "-"), ("cyan", "--"), ("magenta", ":"), ("white", "-.")]
    for ax, (name, window) in zip(axes.flat, windows.items()):
        ax.imshow(img)
        (y0, y1) = window(row)
        for col, (color, style) in zip(cols, styles):
            x0, x1 = window(col)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                   ec=color, ls=style, lw=2, label=f"token {row * grid + col}"))
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        ax.set_title(f"{name}:\neach token sees {y1 - y0 + 1} × {y1 - y0 + 1} pixels")
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
        ax.legend(loc="lower right", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Mapping[str, float]], title: str = "Training curves") -> Figure:
    """Loss and accuracy per epoch from a training history (a list of dicts)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train (augmented, smoothed labels)")
    ax1.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.legend()
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], label="train (augmented)")
    ax2.plot(epochs, [100 * h["test_acc"] for h in history], label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_curves(runs: Mapping[str, nn.Module | Mapping[str, Any]], ax: Axes | None = None,
                    lines: Mapping[str, float] | None = None, first_epoch: int = 1,
                    style: str = "-", key: str = "test_acc") -> Axes:
    """Test accuracy (%) after each epoch of several training runs, read from their records.

    runs:   {label: a model with ``.provenance``, or a provenance dict}; each record's
            ``history`` holds one entry per epoch with ``epoch`` and ``key``.
    lines:  {label: accuracy in [0, 1]} drawn as horizontal lines (a reference, a teacher, a
            target), each in its own style.
    first_epoch: the first epoch drawn (to zoom in on the end of a long run).
    Returns the axes, for a title and a legend of the lesson's own."""
    ax = ax or plt.gca()
    for label, run in runs.items():
        # getattr: nn.Module's type does not declare the ``provenance`` a trained or loaded model has.
        record = run if isinstance(run, Mapping) else getattr(run, "provenance")
        history = record["history"]
        points = [(e["epoch"], 100 * e[key]) for e in history if e["epoch"] >= first_epoch]
        ax.plot(*zip(*points), style, ms=3, label=label)
    for (label, acc), ls in zip((lines or {}).items(), (":", "--", "-.", (0, (1, 3)))):
        ax.axhline(100 * acc, color="grey" if ls == ":" else None, ls=ls, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    return ax


def plot_confusion(confusion: ArrayLike, classes: Sequence[str], title: str = "Confusion matrix",
                   ax: Axes | None = None) -> Axes:
    """Row-normalised confusion matrix: row = true class, column = predicted class."""
    confusion = np.asarray(confusion, dtype=float)
    rates = confusion / confusion.sum(1, keepdims=True).clip(min=1)
    ax = ax or plt.subplots(figsize=(6.4, 5.4))[1]
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if rates[i, j] >= 0.01:
                ax.text(j, i, f"{100 * rates[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    return ax


def show_token_maps(images: ArrayLike, maps: ArrayLike, titles: Sequence[str] | None = None,
                    suptitle: str | None = None, scale: float = 1.6,
                    colorbar_label: str = "token weight", ncols: int | None = None) -> Figure:
    """Each image above its square token-weight map (e.g. attention pooling over 8x8 tokens).

    Every map is drawn on one colour scale, from 0 to the largest weight of all maps, one flat
    square per token, beside a colour bar labelled ``colorbar_label``: maps can be compared with
    each other and read off the bar. ``ncols`` images per row (default: all in one row)."""
    images = _as_uint8(images)
    maps = np.asarray(maps, dtype=float)
    n, side = len(images), int(round(maps.shape[1] ** 0.5))
    ncols = min(ncols or n, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(ncols * scale + 1, 2.3 * nrows * scale),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        top, bottom = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
        top.imshow(images[i].transpose(1, 2, 0), interpolation="nearest")
        im = bottom.imshow(maps[i].reshape(side, side), cmap="inferno", vmin=0, vmax=maps.max(),
                           interpolation="nearest")
        if titles is not None:
            top.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.colorbar(im, ax=axes, shrink=0.8, label=colorbar_label)
    return fig
