#!/usr/bin/env python3
"""A toy translation task for tests: reverse a sequence of words and map each word to another.

Source ``b d a`` -> target ``A D B`` (with the default word lists). A model must learn both
the vocabulary mapping and the reordering, which needs attention. Deterministic for a seed.
``mapping(swapped)`` makes a second task for fine-tuning: the same words, with the targets of
some source words exchanged (a new domain where most of the first task still holds).
"""

import argparse
import os
import random

SOURCE_WORDS = [f"s{i}" for i in range(20)]
TARGET_WORDS = [f"T{(7 * i + 3) % 20}" for i in range(20)]  # a fixed permutation of 20 words


def mapping(swapped=()):
    """Source word -> target word; the targets of each pair of source words in ``swapped`` exchanged."""
    table = dict(zip(SOURCE_WORDS, TARGET_WORDS))
    for a, b in swapped:
        table[a], table[b] = table[b], table[a]
    return table


def translate(words, table=None):
    """The task's reference translation of a list of source words (``table``: a ``mapping``)."""
    table = table or mapping()
    return [table[w] for w in reversed(words)]


def generate(count, seed, min_length=3, max_length=8, table=None):
    """Returns ``count`` (source, target) sentence pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = [rng.choice(SOURCE_WORDS) for _ in range(rng.randint(min_length, max_length))]
        pairs.append((" ".join(words), " ".join(translate(words, table))))
    return pairs


def write_splits(output, sizes=(("train", 4000), ("valid", 200), ("test", 200)), seed=1, table=None):
    """Writes ``{split}.src`` and ``{split}.tgt`` files into ``output``; test pairs never occur in train."""
    os.makedirs(output, exist_ok=True)
    seen = set()
    for index, (split, count) in enumerate(sizes):
        pairs = [p for p in generate(count * 2, seed + index, table=table) if p[0] not in seen][:count]
        seen.update(source for source, _ in pairs)
        for ext, side in (("src", 0), ("tgt", 1)):
            with open(os.path.join(output, f"{split}.{ext}"), "w", encoding="utf-8") as f:
                f.writelines(pair[side] + "\n" for pair in pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write_splits(args.output, seed=args.seed)
    print(f"toy task written to {args.output}")


if __name__ == "__main__":
    main()
