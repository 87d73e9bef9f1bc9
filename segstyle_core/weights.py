"""Model checkpoints: where they live, how they are fetched, checked and safely loaded.

Checkpoints live in :func:`weights_dir` (a backend's ``weights_dir`` setting >
``$SEGSTYLE_WEIGHTS_DIR`` > the user cache directory); a backend loads the file
:func:`resolve_checkpoint` names, with its full SHA-256, and fills its model with
:func:`load_weights`. The official file names carry the start of the file's SHA-256 (``01ec64`` in
``sam_vit_b_01ec64.pth``); :func:`verify_checkpoint` checks that prefix and, when present, the
full SHA-256 that :func:`download` records beside the file in ``<file>.sha256`` (``sha256sum``'s
format, so ``sha256sum -c sam_vit_b_01ec64.pth.sha256`` checks it too). Meta publishes no hash
for the SAM 2.1 files (``sam2.1_hiera_*.pt``, no hex in their names): their prefix is empty, so
only the full hash recorded at download is checked (a copied-in file without a sidecar is
hashed but not checked). Network access happens
only in :func:`download`. Loading never runs pickled code (``weights_only=True``).
"""

from __future__ import annotations

import functools
import http.client
import os
import pickle
import re
import textwrap
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import platformdirs
from tqdm import tqdm

from segstyle_core.errors import ConfigError, WeightsError, error_line
from segstyle_core.fileio import atomic_write, file_sha256, sha256_file

if TYPE_CHECKING:
    import torch

ENV_WEIGHTS_DIR = "SEGSTYLE_WEIGHTS_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
#: Suffix of the full-hash sidecar written beside every downloaded checkpoint.
SIDECAR_SUFFIX = ".sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint.

    Attributes:
        name: registry name (``"sam_vit_l"``), used by ``segstyle weights download NAME``.
        filename: file name on disk, as published.
        url: official download address.
        sha256_prefix: leading hex digits of the file's SHA-256 (from the published file name);
            empty where none is published (SAM 2.1).
        size_hint: approximate size in bytes, for display only.
        description: one line for ``segstyle weights status``.
        torch_hub: also look in torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``).
    """

    name: str
    filename: str
    url: str
    sha256_prefix: str
    size_hint: int
    description: str
    torch_hub: bool = False


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            "sam_vit_b",
            "sam_vit_b_01ec64.pth",
            _SAM_URL + "sam_vit_b_01ec64.pth",
            "01ec64",
            375_000_000,
            "Segment Anything, ViT-B image encoder",
        ),
        Checkpoint(
            "sam_vit_l",
            "sam_vit_l_0b3195.pth",
            _SAM_URL + "sam_vit_l_0b3195.pth",
            "0b3195",
            1_250_000_000,
            "Segment Anything, ViT-L image encoder (the paper's model)",
        ),
        Checkpoint(
            "sam_vit_h",
            "sam_vit_h_4b8939.pth",
            _SAM_URL + "sam_vit_h_4b8939.pth",
            "4b8939",
            2_560_000_000,
            "Segment Anything, ViT-H image encoder",
        ),
        Checkpoint(
            "vgg19",
            "vgg19-dcbb9e9d.pth",
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            "dcbb9e9d",
            548_000_000,
            "torchvision VGG19 (ImageNet), for Gatys style transfer",
            torch_hub=True,
        ),
        *(
            Checkpoint(
                f"sam2.1_hiera_{size}",
                f"sam2.1_hiera_{size}.pt",
                f"{_SAM2_URL}sam2.1_hiera_{size}.pt",
                "",  # Meta publishes no hash for these files: see the module docstring
                megabytes * 1_000_000,
                f"SAM 2.1, Hiera-{letter} image encoder (images and video)",
            )
            for size, letter, megabytes in (
                ("tiny", "T", 156),
                ("small", "S", 185),
                ("base_plus", "B+", 324),
                ("large", "L", 898),
            )
        ),
    )
}


def get_checkpoint(checkpoint: str | Checkpoint) -> Checkpoint:
    """Return the registry entry for a name (a :class:`Checkpoint` is returned as is).

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    try:
        return CHECKPOINTS[checkpoint]
    except KeyError:
        raise ConfigError(
            f"unknown checkpoint {checkpoint!r}: use one of {', '.join(CHECKPOINTS)}"
        ) from None


def weights_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory checkpoints are downloaded to and looked up in.

    ``override`` (a backend's ``weights_dir`` setting) wins, then ``$SEGSTYLE_WEIGHTS_DIR``, then
    ``<user cache dir>/segstyle/weights``. The directory is not created here.
    """
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(ENV_WEIGHTS_DIR):
        return Path(os.environ[ENV_WEIGHTS_DIR]).expanduser()
    return Path(platformdirs.user_cache_dir("segstyle")) / "weights"


#: :func:`weights_dir` under a name the functions whose parameter is ``weights_dir`` can call.
_weights_dir = weights_dir


def search_dirs(
    checkpoint: str | Checkpoint, override: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Directories searched for ``checkpoint``, in order: :func:`weights_dir`, then torch hub's
    checkpoint cache (``torch.hub.get_dir()/checkpoints``, honours ``$TORCH_HOME``) for
    checkpoints torchvision also downloads (VGG19)."""
    entry = get_checkpoint(checkpoint)
    dirs = [weights_dir(override)]
    if entry.torch_hub:
        import torch  # only for checkpoints torchvision also downloads (VGG19)

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_checkpoint(
    checkpoint: str | Checkpoint, weights_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return the first existing copy of ``checkpoint`` in :func:`search_dirs`.

    Raises:
        WeightsError: not found; the message names the file, every directory searched and the
            command that fetches it.
        ConfigError: unknown checkpoint name.
    """
    entry = get_checkpoint(checkpoint)
    dirs = search_dirs(entry, weights_dir)
    for directory in dirs:
        candidate = directory / entry.filename
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise WeightsError(
        f"checkpoint {entry.filename} not found in {searched}: run `segstyle weights download "
        f"{entry.name}` (from {entry.url}; the weights_dir setting or ${ENV_WEIGHTS_DIR} picks "
        "the folder)"
    )


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<file>.sha256``: where :func:`download` records a checkpoint's full SHA-256."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | os.PathLike[str]) -> str | None:
    """The full SHA-256 recorded for checkpoint ``path``, or ``None`` when it has no sidecar.

    Raises:
        WeightsError: the sidecar exists but holds no SHA-256 (the message says to delete it).
    """
    sidecar = sidecar_path(path)
    try:
        text = sidecar.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WeightsError(f"{sidecar}: cannot read ({exc.strerror}); delete it") from None
    digest = text.split()[0].lower() if text.split() else ""
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


def _mismatch(path: str | os.PathLike[str], entry: Checkpoint, digest: str) -> str | None:
    """Why ``digest`` (of ``path``) fails ``entry``'s checks, or ``None`` when it passes."""
    if not digest.startswith(entry.sha256_prefix):
        return (
            f"checkpoint {path} is corrupt: SHA-256 should start with {entry.sha256_prefix} but "
            f"is {digest}; delete it and run `segstyle weights download {entry.name}`"
        )
    recorded = read_sidecar(path)
    if recorded is not None and recorded != digest:
        return (
            f"checkpoint {path} is corrupt: SHA-256 is {digest} but {sidecar_path(path).name} "
            f"recorded {recorded} at download; delete both and run "
            f"`segstyle weights download {entry.name}`"
        )
    return None


class CheckpointFile(NamedTuple):
    """A checkpoint file and its full SHA-256, which names its weights in cache keys and result
    rows."""

    path: Path
    sha256: str


def own_checkpoint(path: str | os.PathLike[str], field: str) -> CheckpointFile:
    """A checkpoint file of your own, set in the configuration field ``field`` (dotted, e.g.
    ``segmenter.checkpoint``), and its full SHA-256 (there is no published hash to check it
    against).

    Raises:
        WeightsError: the file does not exist or is empty (the message names ``field``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"checkpoint {path} does not exist: fix {field}, or leave it unset to use the "
            "downloaded official checkpoint"
        )
    if path.stat().st_size == 0:
        raise WeightsError(
            f"checkpoint {path} is empty (0 bytes): fix {field}, or leave it unset to use the "
            "downloaded official checkpoint"
        )
    version = path.stat()
    _refuse_pickled_code(path.resolve(), version.st_size, version.st_mtime_ns)
    return CheckpointFile(path, file_sha256(path))


@functools.lru_cache(maxsize=64)
def _refuse_pickled_code(path: Path, size: int, mtime_ns: int) -> None:
    """Read a ``torch.save`` file's pickle with ``weights_only`` (its tensors only mapped), so
    that a file carrying code is refused before any work; once per file version (``size``,
    ``mtime_ns``): backends name their weights again for every cache key. Other formats are
    checked when loaded.

    Raises:
        WeightsError: the pickle carries code, or the file is corrupt.
    """
    if zipfile.is_zipfile(path):
        load_state_dict(path, mmap=True)


def resolve_checkpoint(
    own: str | None,
    field: str,
    official: str | Checkpoint,
    weights_dir: str | os.PathLike[str] | None = None,
) -> CheckpointFile:
    """The checkpoint a backend loads: ``own`` (the file set in ``field``, see
    :func:`own_checkpoint`) if given, else the ``official`` checkpoint found by
    :func:`find_checkpoint` and checked by :func:`verify_checkpoint`.

    Raises:
        WeightsError: the file is missing (the message says how to get it) or fails its check.
        ConfigError: unknown official name.
    """
    if own:
        return own_checkpoint(own, field)
    path = find_checkpoint(official, weights_dir)
    return CheckpointFile(path, verify_checkpoint(path, official))


def verify_checkpoint(path: str | os.PathLike[str], checkpoint: str | Checkpoint) -> str:
    """Check ``path`` against ``checkpoint``'s published SHA-256 prefix and, when the file has a
    ``<file>.sha256`` sidecar, against the full hash recorded there; return the full hash.

    Hashes are memoised per file version (:func:`~segstyle_core.fileio.file_sha256`).

    Raises:
        WeightsError: a check fails, or the sidecar is unreadable (one line naming the file
            and the fix).
    """
    entry = get_checkpoint(checkpoint)
    digest = file_sha256(path)
    problem = _mismatch(path, entry, digest)
    if problem is not None:
        raise WeightsError(problem)
    return digest


def download(
    checkpoint: str | Checkpoint,
    dest_dir: str | os.PathLike[str] | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``checkpoint`` into :func:`weights_dir` (``dest_dir`` overrides) and verify it.

    Data streams to ``<file>.part``; an interrupted download resumes from there with an HTTP
    ``Range`` request (a server that ignores ``Range`` and answers 200 restarts it). The file is
    renamed into place only once its SHA-256 prefix matches, and its full SHA-256 is recorded
    in ``<file>.sha256`` (:func:`sidecar_path`) for later verification. A file that already
    exists and verifies is returned without any network access (and gains a sidecar if it had
    none).

    Args:
        url: mirror address instead of ``checkpoint.url``.
        progress: show a tqdm progress bar on stderr.

    Raises:
        WeightsError: network failure (the ``.part`` is kept for a resume) or checksum mismatch
            (the download is deleted).
    """
    entry = get_checkpoint(checkpoint)
    target = weights_dir(dest_dir) / entry.filename
    if target.is_file():
        digest = verify_checkpoint(target, entry)
        if read_sidecar(target) is None:
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
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise
        # The .part is at least as long as the file: it cannot be resumed, start over.
        part.unlink()
        _fetch(url, part, progress, desc)
        return
    with response:
        resumed = response.status == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=desc,
                disable=not progress,
            ) as bar,
        ):
            received = _copy(response, handle, bar)
    if length is not None and received < int(length):
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")


def _copy(source: Any, handle: IO[bytes], bar: tqdm) -> int:
    """Stream ``source`` into ``handle`` (flushed to disk); return the byte count."""
    received = 0
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        handle.write(chunk)
        bar.update(len(chunk))
        received += len(chunk)
    handle.flush()
    os.fsync(handle.fileno())
    return received


def load_state_dict(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint's ``{parameter name: tensor}`` onto the CPU without running pickled code
    (``mmap``: the tensors stay in the file, mapped, so only the pickle is read).

    A plain state dict is returned as is; a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is unwrapped.

    Raises:
        WeightsError: unreadable/corrupt file, a pickle that carries code, or no tensors inside.
    """
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"refusing to load {path}: it contains pickled code (or is corrupt), which "
            "weights_only loading never runs; delete it and download the official file with "
            "`segstyle weights download NAME`"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
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
    """Fill ``model``, built without weights, from checkpoint ``path`` (:func:`load_state_dict`),
    every parameter present.

    Raises:
        WeightsError: unsafe/corrupt checkpoint, or one made for another architecture than
            ``architecture`` (``"SAM vit_l"``, which the message names).
    """
    state_dict = load_state_dict(path)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        # torch's message: a heading, then a line per kind of problem (missing, unexpected or
        # misfit keys), which can list hundreds of keys.
        lines = str(exc).splitlines()
        problem = textwrap.shorten(lines[1] if len(lines) > 1 else lines[0], 200)
        raise WeightsError(
            f"checkpoint {path} does not fit {architecture} ({problem}): choose the variant it "
            "was trained as"
        ) from None


@dataclass(frozen=True)
class CheckpointStatus:
    """What :func:`status` found for one registered checkpoint.

    Attributes:
        checkpoint: the registry entry.
        path: the copy found (see :func:`find_checkpoint`), or ``None``.
        size: its size in bytes, or ``None``.
        verified: ``True``/``False`` once checked, ``None`` when missing or not checked.
        sha256: the file's full SHA-256 when it was checked.
        full_hash_checked: a ``<file>.sha256`` sidecar was compared too (not just the prefix).
        problem: why verification failed (one line naming the file and the fix), else ``None``.
    """

    checkpoint: Checkpoint
    path: Path | None = None
    size: int | None = None
    verified: bool | None = None
    sha256: str | None = None
    full_hash_checked: bool = False
    problem: str | None = None

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def filename(self) -> str:
        return self.checkpoint.filename

    @property
    def ok(self) -> bool:
        """Present and not failing verification."""
        return self.path is not None and self.verified is not False

    def line(self) -> str:
        """One line for ``segstyle weights status|verify``.

        ``NAME  FILENAME  PATH`` then, when checked, ``sha256 ok (HASH12..., full hash)``
        (or ``prefix only`` without a sidecar; ``unchecked: no published hash`` for a file
        with neither) or ``FAILED: <problem>``; ``missing`` when absent.
        """
        head = f"{self.name:<22} {self.filename:<26} {self.path or 'missing'}"
        if self.verified is True:
            digest = (self.sha256 or "")[:12]
            if self.full_hash_checked:
                return f"{head} sha256 ok ({digest}..., full hash)"
            if self.checkpoint.sha256_prefix:
                return f"{head} sha256 ok ({digest}..., prefix only)"
            return f"{head} sha256 {digest}... (unchecked: no published hash)"
        if self.verified is False:
            return f"{head} FAILED: {self.problem}"
        return head


def check_status(
    checkpoint: str | Checkpoint,
    weights_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> CheckpointStatus:
    """Find ``checkpoint`` and, with ``verify``, hash and check it (seconds for large files).

    Raises:
        ConfigError: unknown checkpoint name.
    """
    entry = get_checkpoint(checkpoint)
    try:
        path = find_checkpoint(entry, weights_dir)
    except WeightsError:
        return CheckpointStatus(entry)
    found = CheckpointStatus(entry, path=path, size=path.stat().st_size)
    if not verify:
        return found
    digest = file_sha256(path)
    try:
        problem = _mismatch(path, entry, digest)
        full = read_sidecar(path) is not None
    except WeightsError as exc:  # an unreadable sidecar
        problem, full = str(exc), False
    return CheckpointStatus(
        entry,
        path=path,
        size=found.size,
        verified=problem is None,
        sha256=digest,
        full_hash_checked=full and problem is None,
        problem=problem,
    )


def status(
    weights_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
    names: Sequence[str] | None = None,
) -> list[CheckpointStatus]:
    """One :class:`CheckpointStatus` per registered checkpoint (or per name in ``names``), for
    ``segstyle weights status`` and ``segstyle weights verify``.

    Hashing large files takes seconds, hence ``verify`` is opt-in.

    Raises:
        ConfigError: an unknown name in ``names`` (the message lists the known ones).
    """
    entries = [get_checkpoint(n) for n in names] if names else list(CHECKPOINTS.values())
    return [check_status(entry, weights_dir, verify) for entry in entries]


def status_report(
    records: Iterable[CheckpointStatus], weights_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """The lines ``segstyle weights status|verify`` prints: :meth:`CheckpointStatus.line` per
    record, then how to fetch what is missing (into :func:`weights_dir`)."""
    records = list(records)
    lines = [record.line() for record in records]
    missing = [record.name for record in records if record.path is None]
    if missing:
        lines.append(
            f"fetch with: segstyle weights download NAME (into {_weights_dir(weights_dir)})"
        )
    return lines
