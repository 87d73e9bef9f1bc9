"""Checkpoint lookup, download (resume, checksum), verification and safe loading.

Downloads go to a local HTTP server on 127.0.0.1 that serves a file the test makes.
"""

from __future__ import annotations

import builtins
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from segstyle_core import fileio, weights
from segstyle_core.errors import ConfigError, WeightsError
from segstyle_core.weights import Checkpoint

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class FileServer:
    """What the test server serves and what it saw."""

    honour_range: bool = True
    truncate_at: int | None = None  # drop the connection after this many body bytes
    ranges: list[str | None] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)
    url: str = ""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: FileServer = self.server.state  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        state.ranges.append(requested)
        start = 0
        if requested and state.honour_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        body = body[: state.truncate_at]
        self.wfile.write(body)
        state.bytes_sent.append(len(body))

    def log_message(self, *args: object) -> None:
        """Keep pytest output quiet."""


@pytest.fixture
def server() -> Iterator[FileServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = FileServer(url=f"http://127.0.0.1:{httpd.server_address[1]}/test_ckpt.pth")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def checkpoint(server: FileServer) -> Checkpoint:
    return Checkpoint(
        name="test_ckpt",
        filename="test_ckpt.pth",
        url=server.url,
        sha256_prefix=PAYLOAD_SHA[:8],
    )


def test_download_verifies_and_renames(tmp_path: Path, checkpoint: Checkpoint, server: FileServer):
    path = weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    assert path == tmp_path / "test_ckpt.pth"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "test_ckpt.pth.part").exists()
    assert weights.verify_checkpoint(path, checkpoint) == PAYLOAD_SHA
    assert server.ranges == [None]
    # Already present and valid: no second request, and its sidecar is not written again
    # (a shared, read-only weights folder).
    sidecar = weights.sidecar_path(path)
    before = sidecar.stat()
    assert weights.download(checkpoint, dest_dir=tmp_path, progress=False) == path
    assert len(server.ranges) == 1
    after = sidecar.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_download_resumes_partial_file(tmp_path: Path, checkpoint: Checkpoint, server: FileServer):
    (tmp_path / "test_ckpt.pth.part").write_bytes(PAYLOAD[:100_000])
    path = weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=100000-"]
    assert server.bytes_sent == [len(PAYLOAD) - 100_000]


def test_interrupted_download_keeps_part_then_resumes(
    tmp_path: Path, checkpoint: Checkpoint, server: FileServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(weights, "_CHUNK", 16_384)
    server.truncate_at = 200_000
    with pytest.raises(WeightsError, match="partial data kept"):
        weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    kept = (tmp_path / "test_ckpt.pth.part").read_bytes()
    assert 0 < len(kept) <= 200_000 and PAYLOAD.startswith(kept)
    server.truncate_at = None
    path = weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [None, f"bytes={len(kept)}-"]
    assert server.bytes_sent[1] == len(PAYLOAD) - len(kept)


def test_download_restarts_when_server_ignores_range(
    tmp_path: Path, checkpoint: Checkpoint, server: FileServer
):
    server.honour_range = False
    (tmp_path / "test_ckpt.pth.part").write_bytes(PAYLOAD[:100_000])
    path = weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=100000-"]
    assert server.bytes_sent == [len(PAYLOAD)]


def test_download_restarts_when_part_is_too_long(
    tmp_path: Path, checkpoint: Checkpoint, server: FileServer
):
    (tmp_path / "test_ckpt.pth.part").write_bytes(b"x" * (len(PAYLOAD) + 5))
    path = weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [f"bytes={len(PAYLOAD) + 5}-", None]


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, checkpoint: Checkpoint, server: FileServer
):
    wrong = replace(checkpoint, sha256_prefix="00000000")
    with pytest.raises(WeightsError, match="expected a hash starting with 00000000"):
        weights.download(wrong, dest_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_network_failure_keeps_part(tmp_path: Path, checkpoint: Checkpoint):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/test_ckpt.pth"
    (tmp_path / "test_ckpt.pth.part").write_bytes(PAYLOAD[:10])
    with pytest.raises(WeightsError, match="segstyle weights download test_ckpt` to resume"):
        weights.download(checkpoint, dest_dir=tmp_path, url=dead_url, progress=False)
    assert (tmp_path / "test_ckpt.pth.part").read_bytes() == PAYLOAD[:10]


def test_verify_rejects_wrong_file_and_caches_hash(
    tmp_path: Path, checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "test_ckpt.pth"
    path.write_bytes(PAYLOAD)
    calls = []
    real = fileio.sha256_file
    monkeypatch.setattr(fileio, "sha256_file", lambda p: calls.append(p) or real(p))
    assert weights.verify_checkpoint(path, checkpoint) == PAYLOAD_SHA
    assert weights.verify_checkpoint(path, checkpoint) == PAYLOAD_SHA
    assert len(calls) == 1
    path.write_bytes(PAYLOAD + b"?")
    with pytest.raises(WeightsError) as info:
        weights.verify_checkpoint(path, checkpoint)
    message = str(info.value)
    assert str(path) in message and PAYLOAD_SHA[:8] in message
    assert "segstyle weights download test_ckpt" in message and "\n" not in message
    assert len(calls) == 2


def test_missing_checkpoint_names_file_dirs_and_command(tmp_path: Path, checkpoint: Checkpoint):
    with pytest.raises(WeightsError) as info:
        weights.find_checkpoint(checkpoint, tmp_path / "nowhere")
    message = str(info.value)
    assert "test_ckpt.pth" in message and str(tmp_path / "nowhere") in message
    assert "segstyle weights download test_ckpt" in message and checkpoint.url in message
    assert "the weights_dir setting or $SEGSTYLE_WEIGHTS_DIR picks the folder" in message
    assert "\n" not in message and " --" not in message  # settings, not CLI flags


def test_resolve_checkpoint_takes_the_own_file_else_the_verified_official_one(
    tmp_path: Path, checkpoint: Checkpoint
):
    official = tmp_path / "test_ckpt.pth"
    official.write_bytes(PAYLOAD)
    found = weights.resolve_checkpoint(None, "segmenter.checkpoint", checkpoint, tmp_path)
    assert found == weights.CheckpointFile(official, PAYLOAD_SHA)
    own = tmp_path / "mine.pth"
    torch.save({"weight": torch.zeros(2)}, own)
    mine = weights.resolve_checkpoint(str(own), "segmenter.checkpoint", checkpoint, tmp_path)
    assert (mine.path, mine.sha256) == (own, hashlib.sha256(own.read_bytes()).hexdigest())
    with pytest.raises(WeightsError, match="absent.pth does not exist: fix segmenter.checkpoint"):
        weights.resolve_checkpoint(str(tmp_path / "absent.pth"), "segmenter.checkpoint", checkpoint)
    (tmp_path / "empty.pth").touch()
    with pytest.raises(WeightsError, match="empty.pth is empty .0 bytes.: fix stylizer.vgg_che"):
        weights.resolve_checkpoint(str(tmp_path / "empty.pth"), "stylizer.vgg_checkpoint", "vgg19")
    with pytest.raises(WeightsError, match=r"cannot read checkpoint .*empty.pth \(EOFError\)"):
        weights.load_state_dict(tmp_path / "empty.pth")
    official.write_bytes(b"another file")
    with pytest.raises(WeightsError, match="is corrupt"):
        weights.resolve_checkpoint(None, "segmenter.checkpoint", checkpoint, tmp_path)


def test_load_weights_fills_every_parameter_or_names_the_architecture(tmp_path: Path):
    torch.manual_seed(0)
    saved = torch.nn.Linear(3, 2)
    torch.save(saved.state_dict(), tmp_path / "linear.pth")
    model = torch.nn.Linear(3, 2)
    weights.load_weights(model, tmp_path / "linear.pth", "Linear 3x2")
    assert torch.equal(model.weight, saved.weight) and torch.equal(model.bias, saved.bias)
    with pytest.raises(WeightsError, match=r"linear.pth does not fit Linear 4x2 \(.*size mismatch"):
        weights.load_weights(torch.nn.Linear(4, 2), tmp_path / "linear.pth", "Linear 4x2")


def test_unknown_checkpoint_name_lists_names():
    with pytest.raises(ConfigError, match="sam_vit_l"):
        weights.find_checkpoint("sam_vit_z")


def test_weights_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR, raising=False)
    assert weights.weights_dir().parts[-2:] == ("segstyle", "weights")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path / "env"))
    assert weights.weights_dir() == tmp_path / "env"
    assert weights.weights_dir(tmp_path / "flag") == tmp_path / "flag"
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "sam_vit_b_01ec64.pth").write_bytes(b"")
    assert weights.find_checkpoint("sam_vit_b") == tmp_path / "env" / "sam_vit_b_01ec64.pth"


def test_vgg19_found_in_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    (hub / "sam_vit_b_01ec64.pth").write_bytes(b"")
    assert weights.find_checkpoint("vgg19", tmp_path / "empty") == hub / "vgg19-dcbb9e9d.pth"
    with pytest.raises(WeightsError):
        weights.find_checkpoint("sam_vit_b", tmp_path / "empty")


class _RunsCode:
    def __reduce__(self):
        return (builtins.print, ("PICKLE PAYLOAD RAN",))


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, path)
    with pytest.raises(WeightsError, match="refusing to load .*pickled code"):
        weights.load_state_dict(path)
    assert "PICKLE PAYLOAD RAN" not in capsys.readouterr().out


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_load_state_dict_plain_and_wrapped(tmp_path: Path, wrapper: str | None):
    state = {"layer.weight": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / "ok.pth"
    torch.save(state if wrapper is None else {wrapper: state}, path)
    loaded = weights.load_state_dict(path)
    assert list(loaded) == ["layer.weight"]
    assert torch.equal(loaded["layer.weight"], state["layer.weight"])


def test_load_state_dict_rejects_corrupt_and_non_tensor(tmp_path: Path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(WeightsError, match="truncated.pth"):
        weights.load_state_dict(truncated)
    numbers = tmp_path / "numbers.pth"
    torch.save({"epoch": 3}, numbers)
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        weights.load_state_dict(numbers)


def test_status_reports_presence_and_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"not the real file")
    records = {r.name: r for r in weights.status(tmp_path, verify=True)}
    assert set(records) == set(weights.CHECKPOINTS)
    assert records["sam_vit_b"].path == tmp_path / "sam_vit_b_01ec64.pth"
    assert records["sam_vit_b"].verified is False and not records["sam_vit_b"].ok
    assert "FAILED: checkpoint" in records["sam_vit_b"].line()
    assert "should start with 01ec64" in records["sam_vit_b"].line()
    assert records["sam_vit_l"].path is None and records["sam_vit_l"].verified is None
    assert weights.status(tmp_path)[0].verified is None
    with pytest.raises(ConfigError, match="sam_vit_l"):
        weights.status(tmp_path, names=["sam_vit_z"])


# --- verify with the full-hash sidecar --------------------------------------------------------

TINY = b"a tiny fake checkpoint"
TINY_SHA = hashlib.sha256(TINY).hexdigest()


@pytest.fixture
def tiny_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp weights dir and an official table whose ``sam_vit_b`` is a tiny file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fake = Checkpoint("sam_vit_b", "sam_vit_b_tiny.pth", "http://127.0.0.1:9/none", TINY_SHA[:6])
    monkeypatch.setitem(weights.CHECKPOINTS, "sam_vit_b", fake)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "sam_vit_b_tiny.pth").write_bytes(TINY)
    return folder


def test_verify_command_records_do_not_crash_and_check_prefix(tiny_registry: Path):
    """The old `segstyle weights verify` died with KeyError: 'sha256' once a file was there."""
    records = weights.status(tiny_registry, verify=True, names=["sam_vit_b", "sam_vit_l"])
    tiny, large = records
    assert tiny.verified is True and tiny.ok
    # no sidecar: the published prefix alone
    assert tiny.line().endswith(f"sha256 ok ({TINY_SHA[:12]}..., prefix only)")
    assert large.path is None and large.line().endswith("missing") and not large.ok
    lines = weights.status_report(records, tiny_registry)
    assert len(lines) == 3 and lines[-1].startswith("fetch with: segstyle weights download")
    assert str(tiny_registry) in lines[-1]
    assert weights.status_report(records[:1], tiny_registry) == [tiny.line()]


def test_verify_checks_the_full_hash_sidecar(tiny_registry: Path):
    path = tiny_registry / "sam_vit_b_tiny.pth"
    sidecar = weights.write_sidecar(path, TINY_SHA)
    assert sidecar == tiny_registry / "sam_vit_b_tiny.pth.sha256"
    assert sidecar.read_text() == f"{TINY_SHA}  sam_vit_b_tiny.pth\n"  # sha256sum -c format
    (record,) = weights.status(tiny_registry, verify=True, names=["sam_vit_b"])
    assert record.verified and record.line().endswith("full hash)")
    # Same prefix, different file: only the sidecar can tell.
    sidecar.write_text(f"{TINY_SHA[:6]}{'0' * 58}  sam_vit_b_tiny.pth\n")
    (record,) = weights.status(tiny_registry, verify=True, names=["sam_vit_b"])
    assert record.verified is False and "recorded" in record.line()
    assert "FAILED" in record.line() and "\n" not in record.line()
    with pytest.raises(WeightsError, match="sam_vit_b_tiny.pth.sha256 recorded"):
        weights.verify_checkpoint(path, "sam_vit_b")
    sidecar.write_text("garbage\n")
    (record,) = weights.status(tiny_registry, verify=True, names=["sam_vit_b"])
    assert record.verified is False and "not a SHA-256 record; delete it" in record.line()


def test_verify_catches_a_changed_file_with_the_right_prefix(
    tiny_registry: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tiny_registry / "sam_vit_b_tiny.pth"
    weights.write_sidecar(path, TINY_SHA)
    # Another file whose hash happens to share the (monkeypatched) published prefix.
    other = b"a different tiny file"
    prefix = hashlib.sha256(other).hexdigest()[:6]
    monkeypatch.setitem(
        weights.CHECKPOINTS,
        "sam_vit_b",
        replace(weights.CHECKPOINTS["sam_vit_b"], sha256_prefix=prefix),
    )
    path.write_bytes(other)
    (record,) = weights.status(tiny_registry, verify=True, names=["sam_vit_b"])
    assert record.verified is False and not record.ok


def test_download_writes_the_sidecar(tmp_path: Path, checkpoint: Checkpoint, server: FileServer):
    path = weights.download(checkpoint, dest_dir=tmp_path, progress=False)
    assert weights.read_sidecar(path) == PAYLOAD_SHA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_ckpt.pth", "test_ckpt.pth.sha256"]
    # A file already there without a sidecar (an older download) gains one, offline.
    weights.sidecar_path(path).unlink()
    assert weights.download(checkpoint, dest_dir=tmp_path, progress=False) == path
    assert weights.read_sidecar(path) == PAYLOAD_SHA and len(server.ranges) == 1
    # A damaged download is refused by the sidecar even though its prefix is the published one.
    weights.write_sidecar(path, "f" * 64)
    with pytest.raises(WeightsError, match="recorded f{64}"):
        weights.download(checkpoint, dest_dir=tmp_path, progress=False)


def test_a_checkpoint_without_published_hash_is_checked_by_its_sidecar(
    tmp_path: Path, checkpoint: Checkpoint, server: FileServer
):
    """SAM 2.1's files carry no hash in their names: the download records one, verify uses it."""
    unpublished = replace(checkpoint, sha256_prefix="")
    path = weights.download(unpublished, dest_dir=tmp_path, progress=False)
    assert weights.read_sidecar(path) == PAYLOAD_SHA
    record = weights.check_status(unpublished, tmp_path, verify=True)
    assert record.verified and record.line().endswith("full hash)")
    weights.write_sidecar(path, "f" * 64)
    with pytest.raises(WeightsError, match="recorded f{64}"):
        weights.verify_checkpoint(path, unpublished)
    weights.sidecar_path(path).unlink()
    record = weights.check_status(unpublished, tmp_path, verify=True)
    assert record.ok
    assert record.line().endswith(f"sha256 {PAYLOAD_SHA[:12]}... (unchecked: no published hash)")


def test_sam2_checkpoints_are_registered_with_their_official_urls():
    base = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
    for size in ("tiny", "small", "base_plus", "large"):
        entry = weights.CHECKPOINTS[f"sam2.1_hiera_{size}"]
        assert (entry.filename, entry.url) == (f"sam2.1_hiera_{size}.pt", f"{base}{entry.filename}")
        assert entry.sha256_prefix == ""


def test_an_own_checkpoint_carrying_code_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--checkpoint``/``--vgg`` naming a file with pickled code: refused when the backend
    names its weights (the preflight), not when a stage loads it; the code never runs."""
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, path)
    with pytest.raises(WeightsError, match="refusing to load .*pickled code"):
        weights.own_checkpoint(path, "segmenter.checkpoint")
    assert "PICKLE PAYLOAD RAN" not in capsys.readouterr().out
    good = tmp_path / "good.pth"
    torch.save({"weight": torch.zeros(2)}, good)
    assert weights.own_checkpoint(good, "segmenter.checkpoint").path == good
    # not a zip, so not mapped: loaded whole, and any unpickler error is one WeightsError (text
    # starting with "h" made it raise KeyError: 101, a traceback from `segstyle stylize`)
    for name, content in (("hello.pth", b"hello\n"), ("page.pth", b"<!DOCTYPE html>\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match=f"{name}"):
            weights.own_checkpoint(tmp_path / name, "stylizer.vgg_checkpoint")
    legacy = tmp_path / "legacy.pth"  # torch.save's format before the zip one still loads
    torch.save({"weight": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert weights.own_checkpoint(legacy, "segmenter.checkpoint").path == legacy
