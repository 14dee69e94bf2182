"""Build the real-text corpus from Debian packages (docs/real-text.md): training text of three
kinds, and whole documents held out for evaluation.

    sudo apt-get install linux-doc-6.1 python3.11-doc bible-kjv
    python examples/real_text/corpus.py OUT_DIR

writes OUT_DIR/train/{kernel,python,bible}.txt (about 4 MB each) and OUT_DIR/heldout/*.txt
(five documents none of the training text contains, each read whole).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

KERNEL = Path("/usr/share/doc/linux-doc-6.1/Documentation")
PYTHON = Path("/usr/share/doc/python3.11/html/_sources")
PACKAGES = "linux-doc-6.1 python3.11-doc bible-kjv"
PER_KIND = 4_000_000  # bytes of training text per kind

HELD_OUT_FILES = {
    "kvm-api": KERNEL / "virt/kvm/api.rst.gz",
    "ftrace": KERNEL / "trace/ftrace.rst.gz",
    "stdtypes": PYTHON / "library/stdtypes.rst.txt",
    # The packages' other plain-text documents of 200K bytes or more, none of them training text
    # (training reads .rst sources only): a parameter reference, a maintainers' list, two
    # changelogs.
    "kernel-parameters": KERNEL / "admin-guide/kernel-parameters.txt.gz",
    "maintainers": KERNEL.parent / "MAINTAINERS.gz",
    "python-news": PYTHON.parents[1] / "NEWS.gz",
    "python-history": PYTHON.parents[1] / "HISTORY.gz",
}
HELD_OUT_BOOKS = {"psalms": "Psalms", "jeremiah": "Jeremiah"}
CHAPTER = re.compile(r"^((?:[1-3] )?[A-Z][A-Za-z ]+) \d+$")  # "Genesis 1", "1 Kings 3"


def read(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def bible_books() -> dict[str, str]:
    """The King James text, book by book, as the `bible` program prints it."""
    text = subprocess.run(
        ["bible", "-l0", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    books: dict[str, list[str]] = {}
    book = None
    for line in text.splitlines(keepends=True):
        match = CHAPTER.match(line.rstrip("\n"))
        if match:
            book = match.group(1)
        if book is not None:
            books.setdefault(book, []).append(line)
    return {name: "".join(lines) for name, lines in books.items()}


def documents(root: Path, pattern: str, held_out: set[Path]) -> str:
    """Every file under root matching pattern, in path order, joined by blank lines, until
    PER_KIND bytes; the held-out files are skipped."""
    out, size = [], 0
    for path in sorted(root.rglob(pattern)):
        if path in held_out:
            continue
        text = read(path)
        out.append(text)
        size += len(text.encode())
        if size >= PER_KIND:
            break
    return "\n\n".join(out)


def main(out_dir: str) -> None:
    if not KERNEL.is_dir() or not PYTHON.is_dir():
        sys.exit(f"missing documentation: sudo apt-get install {PACKAGES}")
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    held_out = set(HELD_OUT_FILES.values())
    books = bible_books()
    train = {
        "kernel": documents(KERNEL, "*.rst.gz", held_out),
        "python": documents(PYTHON, "*.rst.txt", held_out),
        "bible": "".join(t for b, t in books.items() if b not in HELD_OUT_BOOKS.values()),
    }
    heldout = {name: read(path) for name, path in HELD_OUT_FILES.items()}
    heldout.update({name: books[book] for name, book in HELD_OUT_BOOKS.items()})
    for folder, texts in (("train", train), ("heldout", heldout)):
        for name, text in texts.items():
            (out / folder / f"{name}.txt").write_text(text, encoding="utf-8")
            print(f"{folder}/{name}.txt: {len(text.encode()):,} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "corpus")
