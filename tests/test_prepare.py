"""data/prepare.py: Multi30k from a local mirror of .gz files, with the line-count check."""

import gzip
import subprocess
import sys

from conftest import ROOT

LANGS = ("en", "de", "fr", "cs")
SPLITS = ("train", "val", "test_2016_flickr")


def _mirror(path, lines=3, short=None):
    path.mkdir()
    for split in SPLITS:
        for lang in LANGS:
            n = lines - 1 if (split, lang) == short else lines
            text = "".join(f"{split} {lang} {i}\n" for i in range(n))
            (path / f"{split}.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    return path


def _prepare(mirror, output):
    return subprocess.run([sys.executable, f"{ROOT}/data/prepare.py", "--mirror", str(mirror), "--output",
                           str(output)], capture_output=True, text=True)


def test_reads_the_mirror_into_plain_text(tmp_path):
    result = _prepare(_mirror(tmp_path / "mirror"), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for split in SPLITS:
        for lang in LANGS:
            assert (tmp_path / "out" / f"{split}.{lang}").read_text().splitlines()[2] == f"{split} {lang} 2"


def test_languages_with_different_line_counts_fail(tmp_path):
    result = _prepare(_mirror(tmp_path / "mirror", short=("val", "fr")), tmp_path / "out")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: the languages of val have different line counts")
    assert "val.fr: 2" in result.stderr
