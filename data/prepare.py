#!/usr/bin/env python3
"""Fetches Multi30k (task 1: en, de, fr, cs) into data/multi30k/ as plain text.

Reads the ``.gz`` files from a local mirror folder when it exists (``MULTI30K_MIRROR``,
default ``../shared/data/multi30k``), else downloads them from the public Multi30k
repository. Checks that the languages of each split have the same number of lines.
Standard library only, so it runs before the virtual environment exists.
"""

import argparse
import gzip
import os
import sys
import urllib.request

URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
SPLITS = ("train", "val", "test_2016_flickr")
LANGUAGES = ("en", "de", "fr", "cs")
HERE = os.path.dirname(os.path.abspath(__file__))


def fetch(name, mirror):
    """Returns the gzipped bytes of ``name`` from the mirror folder or the public repository."""
    local = os.path.join(mirror, name) if mirror else None
    if local and os.path.isfile(local):
        with open(local, "rb") as f:
            return f.read(), local
    url = URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read(), url
    except OSError as error:
        raise SystemExit(f"error: cannot download {url} ({error}); set MULTI30K_MIRROR to a folder with "
                         f"the Multi30k .gz files to work offline")


def prepare(output, mirror):
    os.makedirs(output, exist_ok=True)
    for split in SPLITS:
        counts = {}
        for lang in LANGUAGES:
            name = f"{split}.{lang}.gz"
            data, origin = fetch(name, mirror)
            try:
                text = gzip.decompress(data)
            except (OSError, EOFError) as error:
                raise SystemExit(f"error: {origin}: not a gzip file ({error})")
            path = os.path.join(output, f"{split}.{lang}")
            with open(path + ".tmp", "wb") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
            counts[lang] = text.count(b"\n") + (0 if text.endswith(b"\n") or not text else 1)
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{split}.{lang}: {n}" for lang, n in counts.items())
            raise SystemExit(f"error: the languages of {split} have different line counts ({detail})")
        print(f"{split}: {next(iter(counts.values()))} lines in {', '.join(LANGUAGES)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(HERE, "multi30k"))
    parser.add_argument("--mirror", default=os.environ.get(
        "MULTI30K_MIRROR", os.path.join(HERE, "..", "..", "shared", "data", "multi30k")))
    args = parser.parse_args()
    mirror = args.mirror if os.path.isdir(args.mirror) else None
    print(f"Multi30k from {os.path.abspath(mirror) if mirror else URL.format(name='')}", file=sys.stderr)
    prepare(args.output, mirror)


if __name__ == "__main__":
    main()
