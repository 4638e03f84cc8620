"""Pictures for a person to look at: attention heatmaps and learning curves (matplotlib, no display needed)."""

import os

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


def write_learning_curves(model_dir):
    """Draws ``learning_curves.png`` in ``model_dir`` from its ``validation.jsonl``: training and
    validation loss (left) and validation BLEU (right) against training steps."""
    from seq2seq import model_dir as md

    records = [r for r in md.read_history(model_dir) if "averaged_steps" not in r]
    if not records:
        return
    steps = [r["step"] for r in records]
    figure, (loss_axes, bleu_axes) = plt.subplots(1, 2, figsize=(11, 4))
    trained = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    if trained:
        loss_axes.plot(*zip(*trained), marker=".", label="training (label smoothing, dropout)")
    loss_axes.plot(steps, [r["loss"] for r in records], marker=".", label="validation (plain cross-entropy)")
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss per target token")
    loss_axes.legend()
    loss_axes.grid(alpha=0.3)
    bleu_axes.plot(steps, [r["bleu"] for r in records], marker=".", color="tab:green")
    best = max(records, key=lambda r: r["bleu"])
    bleu_axes.annotate(f"best {best['bleu']:.2f}", (best["step"], best["bleu"]), textcoords="offset points",
                       xytext=(0, 6), ha="center")
    low, high = bleu_axes.get_ylim()
    bleu_axes.set_ylim(low, high + 0.08 * (high - low))  # room for the label
    bleu_axes.set_xlabel("step")
    bleu_axes.set_ylabel("validation BLEU")
    bleu_axes.grid(alpha=0.3)
    figure.suptitle(os.path.basename(os.path.abspath(model_dir)))
    figure.tight_layout()
    tmp = os.path.join(model_dir, md.LEARNING_CURVES + ".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, os.path.join(model_dir, md.LEARNING_CURVES))
