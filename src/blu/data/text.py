"""Text: reading a file strictly as UTF-8 (whole or a block at a time), the default tiny
Shakespeare corpus (downloaded once and verified), and where one text is cut into training
and validation (the split point)."""

import hashlib
import io
from pathlib import Path
import urllib.request

from ..config import MAX_VALIDATION_CHARS
from ..errors import BluError
from ..files import atomic_write, cache_dir

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_NAME = "tinyshakespeare.txt"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_corpus_path() -> Path:
    """Tiny Shakespeare in the cache folder, downloaded and verified once."""
    path = cache_dir() / SHAKESPEARE_NAME
    if path.is_file():
        if sha256_of(path.read_bytes()) != SHAKESPEARE_SHA256:
            raise BluError(f"{path} is not tiny Shakespeare (SHA-256 mismatch): delete it to download it again")
        return path
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
            data = response.read()
    except OSError as error:
        raise BluError(
            f"could not download tiny Shakespeare ({error}); save {SHAKESPEARE_URL} as {path} or pass --data FILE"
        ) from None
    if sha256_of(data) != SHAKESPEARE_SHA256:
        raise BluError(f"the download from {SHAKESPEARE_URL} failed its SHA-256 check; save the file as {path}")
    atomic_write(path, data)
    return path


def read_corpus(path) -> str:
    """The text of a UTF-8 file, or a one-line BluError saying why it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BluError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BluError(f"{path} is a folder, not a text file") from None
    except OSError as error:
        raise BluError(f"{path}: cannot read ({error.strerror})") from None
    if not data:
        raise BluError(f"{path} is empty")
    return decode_text(path, data)


def decode_text(path, data: bytes) -> str:
    """The bytes of file `path` as text, or a one-line BluError naming it: binary, or not UTF-8
    (with the offset of the first bad byte)."""
    return "".join(decoded_blocks(path, io.BytesIO(data)))


def decoded_blocks(path, stream, block_bytes: int = 1 << 20):
    """The text of a binary stream a block at a time, as strict UTF-8 (see decode_text)."""
    pending, offset = b"", 0
    while block := stream.read(block_bytes):
        data = pending + block
        if b"\x00" in data:
            raise BluError(f"{path} looks binary (NUL byte at offset {offset + data.index(0)}); blu trains on text")
        try:
            text, pending = data.decode("utf-8"), b""
        except UnicodeDecodeError as error:
            if error.end != len(data) or error.reason != "unexpected end of data":
                raise not_utf8(path, data[error.start], offset + error.start) from None
            text, pending = data[: error.start].decode("utf-8"), data[error.start :]  # a character cut by the block
        offset += len(data) - len(pending)
        yield text
    if pending:
        raise not_utf8(path, pending[0], offset)


def not_utf8(path, byte: int, offset: int) -> BluError:
    return BluError(f"{path} is not UTF-8: invalid byte 0x{byte:02x} at offset {offset}")


def split_point(n: int, context: int, name: str, fraction: float) -> int:
    """Where a text of `n` characters (or tokens) is cut in two: the final `fraction` of it, at
    most MAX_VALIDATION_CHARS, for validation and the rest for training; refusing texts too
    short to train on. Cutting the text, not its tokens, scores the same text whatever the
    tokenizer."""
    if not 0 < fraction < 1:
        raise BluError(f"val-fraction must be between 0 and 1, got {fraction}")

    def validation_size(n: int) -> int:
        return min(int(n * fraction), MAX_VALIDATION_CHARS)

    def fits(n: int) -> bool:
        return validation_size(n) >= 2 and n - validation_size(n) >= context + 1

    if not fits(n):
        raise BluError(
            f"{name} is too short: {n} characters; a context of {context} needs at least {_shortest(fits, context + 1)}"
            f" (a training window plus a {fraction:.0%} validation split)"
        )
    return n - validation_size(n)


def _shortest(fits, low: int) -> int:
    """The least n >= `low` for which `fits(n)`, a test that stays true once true (both sizes in
    split_point grow with n): found by doubling then halving, at once even for a tiny fraction."""
    high = low
    while not fits(high):
        low, high = high + 1, high * 2
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    return low


def load_text(path=None, expected_sha256: str | None = None) -> tuple[str, Path]:
    """The text of `path` (tiny Shakespeare when None) and its path; with `expected_sha256`,
    refuse a file that changed since a run was started on it."""
    path = Path(path) if path else default_corpus_path()
    text = read_corpus(path)
    if expected_sha256 and sha256_of(text.encode("utf-8")) != expected_sha256:
        raise BluError(f"{path} has changed since this run was trained on it (SHA-256 differs)")
    return text, path
