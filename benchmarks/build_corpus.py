"""A corpus of real text built offline from Debian packages, for the corpus benchmarks: every
UTF-8 text file below the given folders (gzip files decompressed; binary, non-UTF-8 and
empty files left out), each file once, as one document of JSONL files of 64 MB, until the
given size is reached. No file is repeated, so BPE and compression figures mean something.

    cd /tmp/debs && apt-get download linux-doc-6.1 perl-doc python3.11-doc linux-source-6.1   # 197 MB
    for d in *.deb; do dpkg-deb -x $d root/; done; tar -xJf root/usr/src/linux-source-6.1.tar.xz -C root/
    R=/tmp/debs/root; DOCS="/usr/share/man /usr/share/doc $R/usr/share/man $R/usr/share/perl $R/usr/share/doc"
    python benchmarks/build_corpus.py --out /tmp/docs100 --mb 100 $DOCS
    python benchmarks/build_corpus.py --out /tmp/text1g --mb 1000 $DOCS $R/linux-source-6.1
    python benchmarks/build_corpus.py --smoke    # a few made-up files into a temporary folder
"""

import argparse
import gzip
import hashlib
import json
from pathlib import Path
import tempfile

from common import SMOKE_HELP

SHARD_BYTES = 64 << 20


def texts(roots):
    """(path, text) of every UTF-8 text file below `roots`, in sorted order."""
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                data = path.read_bytes()
                if path.suffix == ".gz":
                    data = gzip.decompress(data)
                if not data or b"\x00" in data:
                    continue
                yield path, data.decode("utf-8")
            except (OSError, EOFError, UnicodeDecodeError):
                continue


def smoke_tree(folder: Path) -> Path:
    """Files of each kind `texts` meets: text, gzip, binary, not UTF-8, empty, and a duplicate."""
    root = folder / "roots"
    (root / "doc").mkdir(parents=True)
    (root / "doc" / "a.txt").write_text("ROMEO: hello\n" * 50, encoding="utf-8")
    (root / "doc" / "b.md").write_text("naïve café\n" * 40, encoding="utf-8")
    (root / "doc" / "a copy.txt").write_text("ROMEO: hello\n" * 50, encoding="utf-8")
    (root / "man.1.gz").write_bytes(gzip.compress(b".TH BLU 1\nblu \\- train a model\n" * 30))
    (root / "binary").write_bytes(b"\x7fELF\x00\x01")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "empty.txt").write_bytes(b"")
    return root


def build(out: Path, mb: float, roots) -> tuple[int, int]:
    """Collect `mb` megabytes of the texts below `roots` into JSONL files in `out`: (documents, bytes of text)."""
    out.mkdir(parents=True, exist_ok=True)
    goal, total, files, shards, shard, written, seen = mb * 1e6, 0, 0, 0, None, 0, set()
    for path, text in texts(roots):
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest in seen:  # the same text installed twice (a licence, say): once is enough
            continue
        seen.add(digest)
        if shard is None or written >= SHARD_BYTES:
            if shard is not None:
                shard.close()
            shard = open(out / f"part-{shards:03}.jsonl", "w", encoding="utf-8")
            shards, written = shards + 1, 0
        line = json.dumps({"text": text, "source": str(path)}, ensure_ascii=False) + "\n"
        shard.write(line)
        written += len(line.encode("utf-8"))
        total += len(text.encode("utf-8"))
        files += 1
        if total >= goal:
            break
    if shard is not None:  # None: no text below the roots at all
        shard.close()
    return files, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder of JSONL files to write")
    parser.add_argument("--mb", type=float, help="megabytes (10^6 bytes) of text to collect")
    parser.add_argument("roots", nargs="*")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            files, total = build(Path(tmp) / "out", 1.0, [smoke_tree(Path(tmp))])
            lines = [json.loads(line) for p in sorted((Path(tmp) / "out").glob("*.jsonl")) for line in p.open()]
            # a copy.txt (a.txt, the same text after it, left out), b.md, man.1.gz; no binary, latin-1 or empty file
            assert files == len(lines) == 3, lines
            assert {Path(line["source"]).name for line in lines} == {"a copy.txt", "b.md", "man.1.gz"}, lines
            print(f"smoke: {files} documents, {total:,} bytes of text")
        return
    if not (args.out and args.mb and args.roots):
        parser.error("--out, --mb and at least one folder are required (or --smoke)")
    files, total = build(Path(args.out), args.mb, args.roots)
    print(f"{files:,} documents, {total / 1e6:,.1f} MB of text in {args.out}")


if __name__ == "__main__":
    main()
