"""Model checkpoints: where they live, how they are fetched, checked and safely loaded.

Checkpoints live in :func:`weights_dir` (``--weights-dir`` > ``$SEGSTYLE_WEIGHTS_DIR`` > the user
cache directory). The official file names carry the start of the file's SHA-256 (``01ec64`` in
``sam_vit_b_01ec64.pth``); that prefix is what :func:`verify_checkpoint` checks. Network access
happens only in :func:`download`. Loading never runs pickled code (``weights_only=True``).
"""

from __future__ import annotations

import http.client
import os
import pickle
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import platformdirs
import torch
from tqdm import tqdm

from segstyle_core.errors import ConfigError, WeightsError
from segstyle_core.fileio import file_sha256, sha256_file

ENV_WEIGHTS_DIR = "SEGSTYLE_WEIGHTS_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint.

    Attributes:
        name: registry name (``"sam_vit_l"``), used by ``segstyle weights download NAME``.
        filename: file name on disk, as published.
        url: official download address.
        sha256_prefix: leading hex digits of the file's SHA-256 (from the published file name).
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

    ``override`` (``--weights-dir``) wins, then ``$SEGSTYLE_WEIGHTS_DIR``, then
    ``<user cache dir>/segstyle/weights``. The directory is not created here.
    """
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(ENV_WEIGHTS_DIR):
        return Path(os.environ[ENV_WEIGHTS_DIR]).expanduser()
    return Path(platformdirs.user_cache_dir("segstyle")) / "weights"


def search_dirs(
    checkpoint: str | Checkpoint, override: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Directories searched for ``checkpoint``, in order: :func:`weights_dir`, then torch hub's
    checkpoint cache (``torch.hub.get_dir()/checkpoints``, honours ``$TORCH_HOME``) for
    checkpoints torchvision also downloads (VGG19)."""
    entry = get_checkpoint(checkpoint)
    dirs = [weights_dir(override)]
    if entry.torch_hub:
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
        f"checkpoint {entry.filename} not found in {searched}: run "
        f"`segstyle weights download {entry.name}` (pick the folder with --weights-dir or "
        f"${ENV_WEIGHTS_DIR})"
    )


def verify_checkpoint(path: str | os.PathLike[str], checkpoint: str | Checkpoint) -> str:
    """Check ``path`` against ``checkpoint``'s published SHA-256 prefix; return the full hash.

    Raises:
        WeightsError: the hash does not start with the published prefix.
    """
    entry = get_checkpoint(checkpoint)
    digest = file_sha256(path)
    if not digest.startswith(entry.sha256_prefix):
        raise WeightsError(
            f"checkpoint {path} is corrupt: SHA-256 should start with {entry.sha256_prefix} but "
            f"is {digest}; delete it and run `segstyle weights download {entry.name}`"
        )
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
    renamed into place only once its SHA-256 prefix matches; a file that already exists and
    verifies is returned without any network access.

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
        verify_checkpoint(target, entry)
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


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint's ``{parameter name: tensor}`` onto the CPU without running pickled code.

    A plain state dict is returned as is; a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is unwrapped.

    Raises:
        WeightsError: unreadable/corrupt file, a pickle that carries code, or no tensors inside.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"refusing to load {path}: it contains pickled code (or is corrupt), which "
            "weights_only loading never runs; delete it and download the official file with "
            "`segstyle weights download NAME`"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(
            f"cannot read checkpoint {path} ({str(exc).splitlines()[0]}): delete it and "
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


def status(
    weights_dir: str | os.PathLike[str] | None = None, verify: bool = False
) -> list[dict[str, Any]]:
    """One record per registered checkpoint, for ``segstyle weights status``.

    Each record: ``name``, ``filename``, ``description``, ``size_hint`` (bytes), ``path``
    (``str`` of the copy found, or ``None``), ``size`` (bytes on disk or ``None``) and
    ``verified`` (``True``/``False`` when ``verify`` is set and the file exists, else ``None``;
    hashing large files takes seconds, hence opt-in).
    """
    records = []
    for entry in CHECKPOINTS.values():
        try:
            path: Path | None = find_checkpoint(entry, weights_dir)
        except WeightsError:
            path = None
        verified = None
        if verify and path is not None:
            verified = file_sha256(path).startswith(entry.sha256_prefix)
        records.append(
            {
                "name": entry.name,
                "filename": entry.filename,
                "description": entry.description,
                "size_hint": entry.size_hint,
                "path": str(path) if path is not None else None,
                "size": path.stat().st_size if path is not None else None,
                "verified": verified,
            }
        )
    return records
