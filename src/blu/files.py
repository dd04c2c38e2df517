"""Where blu keeps its files, and the one way it writes them: atomically (a temporary file
beside the target, fsync, rename), so that a crash, a kill or a full disk leaves the old file
or the new one, never a part of either."""

from contextlib import contextmanager
import json
import os
from pathlib import Path
import tempfile
from typing import Iterator

from .errors import BluError


def cache_dir() -> Path:
    """$BLU_CACHE, default ~/.cache/blu: tiny Shakespeare and the token cache."""
    return Path(os.environ.get("BLU_CACHE") or Path.home() / ".cache" / "blu")


@contextmanager
def atomic_file(path) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; when the block ends normally it
    is synced to disk and renamed over `path`, otherwise removed. An OSError (a full disk, a
    folder that cannot be written) becomes a one-line BluError; the old file is kept."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; blu's files are ordinary ones
        yield Path(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise BluError(f"could not save {path} ({error.strerror or error}); its previous version is kept") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def refuse_to_replace(path, force: bool) -> None:
    """The one policy for an output the user names (`blu export --out`, as `blu train` treats a
    run folder): a file that exists, or a folder that holds anything, is replaced only with --force."""
    path = Path(path)
    if not force and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BluError(f"{path} already exists: add --force to replace it, or choose another --out")


def atomic_write(path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_json(path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2).encode())


def read_json(path: Path):
    """The JSON of a file of blu's (a run folder's, the cache's), or a one-line BluError saying why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BluError(f"{path.parent} is not a blu run folder: {path.name} is missing") from None
    except (ValueError, OSError) as error:
        raise BluError(f"{path} is unreadable or corrupt ({error})") from None
