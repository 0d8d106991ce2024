"""Plots shared by the lessons, in one style, with a font that renders Chinese tokens."""
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager

FONT_PATH = Path(__file__).parent / "fonts" / "NotoSansSC-course-subset.otf"


def _as_uint8(images):
    """uint8 images stay as they are; float images in [0, 1] become uint8."""
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else (np.clip(images, 0, 1) * 255).astype(np.uint8)


def use_course_style():
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


def attention_heatmap(weights, query_labels, key_labels, ax=None, title="Attention weights",
                      annotate=True):
    """Heatmap of a (queries, keys) attention-weight matrix: row i says where query i looks."""
    weights = np.asarray(weights, dtype=float)
    ax = ax or plt.gca()
    im = ax.imshow(weights, cmap="viridis", vmin=0, vmax=max(weights.max(), 1e-9))
    ax.set_xticks(range(len(key_labels)), key_labels)
    ax.set_yticks(range(len(query_labels)), query_labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    if annotate:
        for i in range(weights.shape[0]):
            for j in range(weights.shape[1]):
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center",
                        color="white" if weights[i, j] < 0.6 * weights.max() else "black", fontsize=8)
    return im


def show_images(images, titles=None, ncols=8, scale=1.1, suptitle=None):
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


def plot_history(history, title="Training curves"):
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


def plot_confusion(confusion, classes, title="Confusion matrix", ax=None):
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


def show_token_maps(images, maps, titles=None, suptitle=None, scale=1.6):
    """Each image beside a square token-weight map (e.g. attention pooling over 8x8 tokens),
    drawn over the image."""
    images = _as_uint8(images)
    maps = np.asarray(maps, dtype=float)
    n, side = len(images), int(round(maps.shape[1] ** 0.5))
    fig, axes = plt.subplots(2, n, figsize=(n * scale, 2.3 * scale), squeeze=False)
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        axes[0, i].imshow(img, interpolation="nearest")
        axes[1, i].imshow(img, interpolation="nearest")
        axes[1, i].imshow(maps[i].reshape(side, side), cmap="inferno", alpha=0.6,
                          extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5),
                          interpolation="bilinear")
        for ax in axes[:, i]:
            ax.axis("off")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
