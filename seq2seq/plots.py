"""Pictures for a person to look at: attention heatmaps (matplotlib, no display needed)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def plot_attention(source_pieces, target_pieces, weights, path, title=None):
    """Writes a heatmap PNG of the attention of each target piece over the source pieces.

    Args:
      source_pieces: list of str, the x axis (source subwords, EOS included).
      target_pieces: list of str, the y axis (output subwords, EOS included).
      weights: float array [len(target_pieces), len(source_pieces)], rows summing to 1.
      path: the PNG file to write.
    """
    width = max(4.0, 0.35 * len(source_pieces) + 1.5)
    height = max(3.0, 0.35 * len(target_pieces) + 1.5)
    figure, axes = plt.subplots(figsize=(width, height))
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(source_pieces)), source_pieces, rotation=90)
    axes.set_yticks(range(len(target_pieces)), target_pieces)
    axes.set_xlabel("source")
    axes.set_ylabel("translation")
    if title:
        axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
