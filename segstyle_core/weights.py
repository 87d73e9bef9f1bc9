"""Model checkpoints: where they live, how they are fetched, checked and safely loaded.

Official file names carry the start of the file's SHA-256 (none for SAM 2.1); :func:`download`
records the full one in ``<file>.sha256`` (``sha256sum -c`` format). Loading never runs pickled
code (``weights_only=True``)."""

from __future__ import annotations

import functools
import http.client
import os
import pickle
import re
import shutil
import textwrap
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import platformdirs
from tqdm import tqdm

from segstyle_core.errors import ConfigError, WeightsError, error_line
from segstyle_core.fileio import atomic_write, file_sha256, sha256_file

if TYPE_CHECKING:
    import torch

ENV_WEIGHTS_DIR = "SEGSTYLE_WEIGHTS_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_HEX64 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


def lookup(registry: Mapping[str, T], key: str, what: str) -> T:
    """``registry[key]`` (ConfigError naming ``what`` and the known keys if absent)."""
    try:
        return registry[key]
    except KeyError:
        raise ConfigError(f"unknown {what} {key!r}: use one of {', '.join(registry)}") from None


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint."""

    name: str  # as in ``segstyle weights download NAME``
    filename: str
    url: str
    sha256_prefix: str  # from the published file name; empty where none is published
    torch_hub: bool = False  # also look in ``$TORCH_HOME/hub/checkpoints``


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_"
_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"

#: Segment Anything ViT-B/L/H, torchvision's VGG19 (ImageNet, for Gatys) and SAM 2.1 Hiera.
CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        *(
            Checkpoint(
                f"sam_vit_{size}", f"sam_vit_{size}_{sha}.pth", f"{_SAM_URL}{size}_{sha}.pth", sha
            )
            for size, sha in (("b", "01ec64"), ("l", "0b3195"), ("h", "4b8939"))
        ),
        Checkpoint("vgg19", "vgg19-dcbb9e9d.pth", _VGG19_URL, "dcbb9e9d", torch_hub=True),
        *(
            Checkpoint(
                f"sam2.1_hiera_{size}", f"sam2.1_hiera_{size}.pt", f"{_SAM2_URL}{size}.pt", ""
            )
            for size in ("tiny", "small", "base_plus", "large")
        ),
    )
}


def get_checkpoint(checkpoint: str | Checkpoint) -> Checkpoint:
    """The registry entry for a name (ConfigError listing the known names if unknown)."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    return lookup(CHECKPOINTS, checkpoint, "checkpoint")


def weights_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoints folder: ``override``, else ``$SEGSTYLE_WEIGHTS_DIR``, else user cache's."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(ENV_WEIGHTS_DIR):
        return Path(os.environ[ENV_WEIGHTS_DIR]).expanduser()
    return Path(platformdirs.user_cache_dir("segstyle")) / "weights"


def find_checkpoint(
    checkpoint: str | Checkpoint, folder: str | os.PathLike[str] | None = None
) -> Path:
    """``checkpoint``'s file in :func:`weights_dir`, else (``torch_hub`` ones) torch's hub cache
    (WeightsError naming the file, the folders and the fetch command; ConfigError: unknown name)."""
    entry = get_checkpoint(checkpoint)
    dirs = [weights_dir(folder)]
    if entry.torch_hub:
        import torch

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    for candidate in (directory / entry.filename for directory in dirs):
        if candidate.is_file():
            return candidate
    raise WeightsError(
        f"checkpoint {entry.filename} not found in {', '.join(map(str, dirs))}: run `segstyle "
        f"weights download {entry.name}` (from {entry.url}; the weights_dir setting or "
        f"${ENV_WEIGHTS_DIR} picks the folder)"
    )


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<file>.sha256``: where :func:`download` records a checkpoint's full SHA-256."""
    return Path(f"{path}.sha256")


def read_sidecar(path: str | os.PathLike[str]) -> str | None:
    """The full SHA-256 recorded for checkpoint ``path``; ``None`` without a sidecar
    (WeightsError saying to delete it if unreadable or holding no SHA-256)."""
    sidecar = sidecar_path(path)
    try:
        text = sidecar.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WeightsError(f"{sidecar}: cannot read ({exc.strerror}); delete it") from None
    digest = (text.split() or [""])[0].lower()
    if not _HEX64.fullmatch(digest):
        raise WeightsError(
            f"{sidecar}: not a SHA-256 record; delete it (verification then uses the "
            "published hash prefix alone)"
        )
    return digest


def write_sidecar(path: str | os.PathLike[str], digest: str) -> Path:
    """Record ``digest`` as checkpoint ``path``'s full SHA-256 (``sha256sum`` format)."""
    sidecar = sidecar_path(path)
    with atomic_write(sidecar, "w") as handle:
        handle.write(f"{digest}  {Path(path).name}\n")
    return sidecar


class CheckpointFile(NamedTuple):
    """A checkpoint file and its full SHA-256 (names its weights in cache keys and rows)."""

    path: Path
    sha256: str


def own_checkpoint(path: str | os.PathLike[str], field: str) -> CheckpointFile:
    """Your own checkpoint file, set in the setting ``field``, and its SHA-256 (WeightsError
    naming ``field``: missing, empty or carrying pickled code)."""
    path = Path(path).expanduser()
    version = path.stat() if path.is_file() else None
    if version is None or version.st_size == 0:
        problem = "does not exist" if version is None else "is empty (0 bytes)"
        raise WeightsError(
            f"checkpoint {path} {problem}: fix {field}, or leave it unset to use the "
            "downloaded official checkpoint"
        )
    _refuse_pickled_code(path.resolve(), version.st_size, version.st_mtime_ns)
    return CheckpointFile(path, file_sha256(path))


@functools.lru_cache(maxsize=64)
def _refuse_pickled_code(path: Path, size: int, mtime_ns: int) -> None:
    """Load the file's tensors, mapped where it is a zip (``torch.save``'s format), once a
    version (WeightsError: pickled code, or not a checkpoint at all)."""
    load_state_dict(path, mmap=zipfile.is_zipfile(path))


def resolve_checkpoint(
    own: str | None,
    field: str,
    official: str | Checkpoint,
    folder: str | os.PathLike[str] | None = None,
) -> CheckpointFile:
    """``own`` (set in ``field``) if given, else the ``official`` checkpoint, found and verified
    (WeightsError: missing or failing; ConfigError: unknown official name)."""
    if own:
        return own_checkpoint(own, field)
    path = find_checkpoint(official, folder)
    return CheckpointFile(path, verify_checkpoint(path, official))


def verify_checkpoint(path: str | os.PathLike[str], checkpoint: str | Checkpoint) -> str:
    """``path``'s SHA-256 (memoised per file version), checked against ``checkpoint``'s prefix and
    the sidecar's full hash (WeightsError naming the file and the fix)."""
    entry = get_checkpoint(checkpoint)
    digest = file_sha256(path)
    if not digest.startswith(entry.sha256_prefix):
        raise WeightsError(
            f"checkpoint {path} is corrupt: SHA-256 should start with {entry.sha256_prefix} but "
            f"is {digest}; delete it and run `segstyle weights download {entry.name}`"
        )
    recorded = read_sidecar(path)
    if recorded is not None and recorded != digest:
        raise WeightsError(
            f"checkpoint {path} is corrupt: SHA-256 is {digest} but {sidecar_path(path).name} "
            f"recorded {recorded} at download; delete both and run "
            f"`segstyle weights download {entry.name}`"
        )
    return digest


def download(
    checkpoint: str | Checkpoint,
    dest_dir: str | os.PathLike[str] | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``checkpoint`` (from ``url``, a mirror, if given) into :func:`weights_dir`
    (``dest_dir`` overrides), with a tqdm ``progress`` bar on stderr, and verify it: data streams
    to ``<file>.part`` (resumed with an HTTP ``Range`` request), renamed into place once its
    SHA-256 prefix matches, the full SHA-256 in the sidecar. A file already there that verifies
    is returned offline. WeightsError: network failure (the ``.part`` kept for a resume) or
    checksum mismatch (the download deleted)."""
    entry = get_checkpoint(checkpoint)
    target = weights_dir(dest_dir) / entry.filename
    if target.is_file():
        digest = verify_checkpoint(target, entry)
        if read_sidecar(target) is None:  # a read-only folder with its sidecar stays unwritten
            write_sidecar(target, digest)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    source = url or entry.url
    try:
        _fetch(source, part, progress, desc=entry.filename)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise WeightsError(
            f"download of {source} failed ({exc}); partial data kept in {part}: check the "
            f"URL, network and disk space and rerun `segstyle weights download {entry.name}` "
            "to resume"
        ) from exc
    digest = sha256_file(part)
    if not digest.startswith(entry.sha256_prefix):
        part.unlink()
        raise WeightsError(
            f"downloaded {source} has SHA-256 {digest}, expected a hash starting with "
            f"{entry.sha256_prefix}; the file was deleted: check the URL or mirror and rerun "
            f"`segstyle weights download {entry.name}`"
        )
    write_sidecar(target, digest)
    os.replace(part, target)
    return target


def _fetch(url: str, part: Path, progress: bool, desc: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with ``Range``), or restart it."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise
        part.unlink()  # at least as long as the file: it cannot be resumed, start over
        _fetch(url, part, progress, desc)
        return
    offset = offset if response.status == 206 else 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    with response, open(part, "ab" if offset else "wb") as handle:
        bar = {"initial": offset, "desc": desc, "disable": not progress}
        with tqdm.wrapattr(handle, "write", total=total, **bar) as out:
            shutil.copyfileobj(response, out, _CHUNK)
        handle.flush()
        os.fsync(handle.fileno())
        received = handle.tell() - offset
    if length is not None and received < int(length):
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")


def load_state_dict(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint's ``{parameter name: tensor}`` on the CPU, no pickled code run (``mmap``:
    tensors stay mapped), a ``{"state_dict"|"model": ...}`` wrapper unwrapped (WeightsError:
    unreadable/corrupt, a pickle that carries code, or no tensors inside)."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"refusing to load {path}: it contains pickled code (or is corrupt), which "
            "weights_only loading never runs; delete it and download the official file with "
            "`segstyle weights download NAME`"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # a hostile file breaks the unpickler in any way (KeyError, ...)
        raise WeightsError(
            f"cannot read checkpoint {path} ({error_line(exc)}): delete it and "
            "download it again with `segstyle weights download NAME`"
        ) from None
    if isinstance(loaded, dict) and len(loaded) == 1:
        wrapped = loaded.get("state_dict", loaded.get("model"))
        if isinstance(wrapped, dict):
            loaded = wrapped
    if not (
        isinstance(loaded, dict)
        and loaded
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise WeightsError(
            f"checkpoint {path} is not a state dict of tensors: save it with "
            "torch.save(model.state_dict(), path)"
        )
    return loaded


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str], architecture: str) -> None:
    """Fill ``model`` from checkpoint ``path``, every parameter present (WeightsError: unsafe
    or corrupt, or made for another architecture than ``architecture``, e.g. ``"SAM vit_l"``)."""
    state_dict = load_state_dict(path)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        # torch's message: a heading, then a line per kind of problem, listing up to all keys
        lines = str(exc).splitlines()
        problem = textwrap.shorten(lines[1] if len(lines) > 1 else lines[0], 200)
        raise WeightsError(
            f"checkpoint {path} does not fit {architecture} ({problem}): choose the variant it "
            "was trained as"
        ) from None


@dataclass(frozen=True)
class CheckpointStatus:
    """One checkpoint's copy (``path``; ``None``: missing) and, once checked, whether it
    ``verified`` (``None``: not checked) and how (``detail``)."""

    checkpoint: Checkpoint
    path: Path | None = None
    verified: bool | None = None
    detail: str = ""

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def ok(self) -> bool:
        """Present and not failing verification."""
        return self.path is not None and self.verified is not False

    def line(self) -> str:
        """``NAME  FILENAME  PATH|missing``, then the ``detail`` once checked."""
        head = f"{self.name:<22} {self.checkpoint.filename:<26} {self.path or 'missing'}"
        return f"{head} {self.detail}" if self.detail else head


def check_status(
    checkpoint: str | Checkpoint,
    folder: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> CheckpointStatus:
    """Find ``checkpoint`` and, with ``verify``, hash and check it: ``sha256 ok (HASH12...,
    full hash|prefix only)``, ``sha256 HASH12... (unchecked: no published hash)`` or ``FAILED:
    <problem>`` (ConfigError: unknown name)."""
    entry = get_checkpoint(checkpoint)
    try:
        path = find_checkpoint(entry, folder)
    except WeightsError:
        return CheckpointStatus(entry)
    if not verify:
        return CheckpointStatus(entry, path)
    try:
        digest = verify_checkpoint(path, entry)[:12]
    except WeightsError as exc:
        return CheckpointStatus(entry, path, False, f"FAILED: {exc}")
    if read_sidecar(path) is not None:
        return CheckpointStatus(entry, path, True, f"sha256 ok ({digest}..., full hash)")
    if entry.sha256_prefix:
        return CheckpointStatus(entry, path, True, f"sha256 ok ({digest}..., prefix only)")
    return CheckpointStatus(entry, path, True, f"sha256 {digest}... (unchecked: no published hash)")


def status(
    folder: str | os.PathLike[str] | None = None,
    verify: bool = False,
    names: Sequence[str] | None = None,
) -> list[CheckpointStatus]:
    """:func:`check_status` of each of ``names`` (default: every registered checkpoint)."""
    return [check_status(name, folder, verify) for name in names or CHECKPOINTS]


def status_report(
    records: Iterable[CheckpointStatus], folder: str | os.PathLike[str] | None = None
) -> list[str]:
    """``segstyle weights status|verify``'s lines: one a record, then how to fetch the missing."""
    records = list(records)
    lines = [record.line() for record in records]
    if any(record.path is None for record in records):
        lines.append(f"fetch with: segstyle weights download NAME (into {weights_dir(folder)})")
    return lines
