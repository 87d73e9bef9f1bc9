"""A stage cache that was shared, copied in or edited by hand never reads, publishes or waits
on anything outside its folder, and never writes there.

Every forged record (a path out of its folder, an absolute path, a symbolic link, ``/dev/zero``,
a FIFO, a symlinked folder, wrong types) is a miss: logged once, computed again and
overwritten, quickly. A read-only cache that must compute again fails in one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from segstyle_core import stagecache
from segstyle_core.fileio import sha256_file
from segstyle_core.stagecache import RECORD, StageRecord, content_sha256, stage, stage_dir
from tests.test_photo import _stylize

SECRET = b"secret: the colleague's private key\n"
#: A size no real output has: reading that much of ``/dev/zero`` would take hours.
HUGE = 1 << 50
T = TypeVar("T")

#: The folders the test stage computed into, in order.
CALLS: list[Path] = []


@dataclass(frozen=True, kw_only=True)
class PanelRecord(StageRecord):
    """Outputs ``panel`` (a file) and ``frames`` (a folder of two files); ``width``."""

    width: int


@stage("figures", files=("source",))
def draw(out: Path, source: str, setting: int) -> PanelRecord:
    """Write ``panel.txt`` (the source's bytes and ``setting``) and ``frames/0.txt``, ``1.txt``.

    Plain writes, not atomic ones: a link left in ``out`` would carry them out of the cache."""
    CALLS.append(out)
    (out / "panel.txt").write_bytes(Path(source).read_bytes() + f" {setting}".encode())
    frames = out / "frames"
    frames.mkdir(exist_ok=True)
    for index in range(2):
        (frames / f"{index}.txt").write_text(f"frame {index} of {setting}")
    return PanelRecord(outputs={"panel": str(out / "panel.txt"), "frames": str(frames)}, width=7)


@dataclass(frozen=True)
class Cache:
    """A computed ``draw`` result and a secret beside its output folder."""

    root: Path
    source: Path
    entry: Path
    secret: Path

    @property
    def record(self) -> Path:
        return self.entry / RECORD

    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.record.read_text()))

    def forge(self, name: str, path: str, digest: str, size: int) -> None:
        """Make output ``name`` of the record name ``path``, with that SHA-256 and size."""
        document = self.document()
        document["outputs"][name] = path
        document["sha256"][name] = digest
        document["sizes"][name] = size
        self.record.write_text(json.dumps(document))

    def rerun(self, caplog: pytest.LogCaptureFixture) -> PanelRecord:
        """Run ``draw`` again (within 30 s) and check it was computed again, logged once, and
        that its record was rewritten; return its record."""
        with caplog.at_level(logging.WARNING, logger="segstyle_core.stagecache"):
            record = within(30, lambda: draw.run(self.root, str(self.source), 1))
        assert not record.cached and len(CALLS) == 2
        assert Path(record.path("panel")).read_bytes() == b"image bytes 1"
        assert Path(record.path("panel")).parent == self.entry
        warnings = [m for m in caplog.messages if str(self.record) in m]
        assert len(warnings) == 1 and "computing it again" in warnings[0], caplog.messages
        stored = self.document()
        assert stored["outputs"] == {
            "panel": str(self.entry.relative_to(self.root) / "panel.txt"),
            "frames": str(self.entry.relative_to(self.root) / "frames"),
        }
        assert stored["sha256"]["panel"] == sha256_file(self.entry / "panel.txt")
        assert stored["sizes"] == {"panel": 13, "frames": 24}
        assert draw.run(self.root, str(self.source), 1).cached  # the rewritten record counts
        return record

    def assert_secret_kept(self) -> None:
        """The secret is intact and no file under the output folder holds it."""
        assert self.secret.read_bytes() == SECRET
        out = self.root.parent
        for path in out.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET not in path.read_bytes(), path


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, failing the test when it takes longer than ``seconds`` (it is left running
    in a daemon thread)."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(call())
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if errors:
        raise errors[0]
    return results[0]


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    """``draw`` computed once in ``<tmp>/out/cache``; a secret in ``<tmp>/secret``."""
    CALLS.clear()
    source = tmp_path / "image.bin"
    source.write_bytes(b"image bytes")
    root = tmp_path / "out" / "cache"
    record = draw.run(root, str(source), 1)
    assert len(CALLS) == 1 and not record.cached
    secret = tmp_path / "secret" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    yield Cache(root, source, stage_dir(root, "figures", record.cache_key), secret)
    CALLS.clear()


def _secret_digest(cache: Cache) -> tuple[str, int]:
    return sha256_file(cache.secret), len(SECRET)


ATTACKS: dict[str, Callable[[Cache], object]] = {
    "a path up and out of the cache": lambda c: c.forge(
        "panel", os.path.relpath(c.secret, c.root), *_secret_digest(c)
    ),
    "a path up and out from inside the entry": lambda c: c.forge(
        "panel",
        str(c.entry.relative_to(c.root) / os.path.relpath(c.secret, c.entry)),
        *_secret_digest(c),
    ),
    "an absolute path": lambda c: c.forge("panel", str(c.secret), *_secret_digest(c)),
    "/dev/zero": lambda c: c.forge("panel", "/dev/zero", "0" * 64, HUGE),
    "another entry's output": lambda c: _other_entry(c),
}


def _other_entry(cache: Cache) -> None:
    """The record names a file of another entry of the same stage."""
    other = draw.run(cache.root, str(cache.source), 2)
    CALLS.pop()
    target = Path(other.path("panel"))
    cache.forge("panel", str(target.relative_to(cache.root)), sha256_file(target), 13)


def _link(path: Path, target: Path) -> None:
    """Put a symbolic link to ``target`` in place of ``path`` (a file or a folder)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


def _panel_link(cache: Cache, target: Path, size: int) -> None:
    _link(cache.entry / "panel.txt", target)
    cache.forge("panel", str((cache.entry / "panel.txt").relative_to(cache.root)), "0" * 64, size)


def _forge_frames(cache: Cache) -> None:
    """Record the frames folder as it is now (its links followed)."""
    frames = cache.entry / "frames"
    size = sum(p.stat().st_size for p in frames.rglob("*") if p.is_file())
    cache.forge("frames", str(frames.relative_to(cache.root)), content_sha256(frames), size)


def _frame_link(cache: Cache) -> None:
    _link(cache.entry / "frames" / "0.txt", cache.secret)
    _forge_frames(cache)


def _frames_folder_link(cache: Cache) -> None:
    """``frames`` is a link to a folder outside the cache that holds the secret."""
    _link(cache.entry / "frames", cache.secret.parent)
    _forge_frames(cache)


def _secret_link(cache: Cache) -> None:
    _link(cache.entry / "panel.txt", cache.secret)
    cache.forge(
        "panel", str((cache.entry / "panel.txt").relative_to(cache.root)), *_secret_digest(cache)
    )


def _fifo(cache: Cache) -> None:
    (cache.entry / "panel.txt").unlink()
    os.mkfifo(cache.entry / "panel.txt")  # reading it would wait for a writer forever
    cache.forge("panel", str((cache.entry / "panel.txt").relative_to(cache.root)), "0" * 64, 13)


ATTACKS.update(
    {
        "a link to the secret in place of the output": _secret_link,
        "a link to /dev/zero in place of the output": lambda c: _panel_link(
            c, Path("/dev/zero"), HUGE
        ),
        "a FIFO in place of the output": _fifo,
        "a link to the secret inside an output folder": _frame_link,
        "an output folder that is a link out of the cache": _frames_folder_link,
    }
)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_forged_record_is_a_logged_miss_that_reads_nothing_outside(
    cache: Cache, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    ATTACKS[attack](cache)
    record = cache.rerun(caplog)
    assert sorted(p.name for p in Path(record.path("frames")).iterdir()) == ["0.txt", "1.txt"]
    assert not any(p.is_symlink() for p in cache.entry.rglob("*"))
    cache.assert_secret_kept()


def _document(change: Callable[[dict[str, Any]], object]) -> Callable[[Cache], object]:
    """An attack that edits the record's JSON document with ``change``."""

    def edit(cache: Cache) -> None:
        document = cache.document()
        change(document)
        cache.record.write_text(json.dumps(document))

    return edit


def _text(text: str) -> Callable[[Cache], object]:
    return lambda cache: cache.record.write_text(text)


def _replace(old: str, new: str) -> Callable[[Cache], object]:
    """An attack that replaces ``old`` by ``new`` in the record's text."""

    def edit(cache: Cache) -> None:
        text = cache.record.read_text()
        assert old in text
        cache.record.write_text(text.replace(old, new))

    return edit


def _record_link(cache: Cache) -> None:
    """``record.json`` is a link to a copy of itself outside the cache."""
    copy = cache.secret.parent / RECORD
    shutil.copyfile(cache.record, copy)
    _link(cache.record, copy)


def _record_fifo(cache: Cache) -> None:
    cache.record.unlink()
    os.mkfifo(cache.record)


def _record_folder(cache: Cache) -> None:
    cache.record.unlink()
    (cache.record / "inner").mkdir(parents=True)


BROKEN_RECORDS: dict[str, Callable[[Cache], object]] = {
    "outputs is a list": _document(lambda d: d.update(outputs=["not", "a", "dict"])),
    "a size is a string": _document(lambda d: d["sizes"].update(panel="13")),
    "a fact of the wrong type": _document(lambda d: d.update(width="7")),
    "a missing fact": _document(lambda d: d.pop("width")),
    "an unknown field": _document(lambda d: d.update(evil=1)),
    "no sizes (an older record)": _document(lambda d: d.pop("sizes")),
    "another key": _document(lambda d: d.update(cache_key="0" * 64)),
    "a fact of one run": _document(lambda d: d.update(cache_root="/etc")),
    "a JSON list": _text("[1, 2]"),
    "null": _text("null"),
    "cut short": _text('{"outputs": {"panel": '),
    "not UTF-8": lambda c: c.record.write_bytes(b"\xff\xfe{}"),
    "nested 100 000 deep": _text("[" * 100_000),
    "a 400-digit size": _replace('"panel": 13', '"panel": ' + "9" * 400),
    "a 5000-digit fact": _replace('"width": 7', '"width": ' + "9" * 5000),
    "a link out of the cache": _record_link,
    "a FIFO": _record_fifo,
    "a folder": _record_folder,
}


@pytest.mark.parametrize("damage", sorted(BROKEN_RECORDS))
def test_a_record_that_is_no_valid_record_is_a_logged_miss(
    cache: Cache, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    BROKEN_RECORDS[damage](cache)
    cache.rerun(caplog)
    assert cache.record.is_file() and not cache.record.is_symlink()
    cache.assert_secret_kept()


def test_a_record_larger_than_the_limit_is_a_logged_miss(
    cache: Cache, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stagecache, "RECORD_LIMIT", cache.record.stat().st_size - 1)
    with caplog.at_level(logging.WARNING, logger="segstyle_core.stagecache"):
        again = draw.run(cache.root, str(cache.source), 1)
    assert not again.cached and len(CALLS) == 2
    assert any("more than the" in m for m in caplog.messages)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("level", [1, 2, 3], ids=["stage", "key prefix", "entry"])
def test_a_symlinked_cache_folder_is_replaced_and_nothing_lands_outside(
    cache: Cache, level: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = cache.root.joinpath(*cache.entry.relative_to(cache.root).parts[:level])
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder, elsewhere)  # the whole result, record and all, now outside the cache
    folder.symlink_to(elsewhere)
    before = _snapshot(elsewhere)

    cache.rerun(caplog)
    assert not folder.is_symlink() and folder.is_dir()
    assert _snapshot(elsewhere) == before  # nothing written there, the link's target intact
    assert (cache.entry / "panel.txt").resolve().is_relative_to(cache.root.resolve())


def test_the_stage_api_still_serves_a_hit_through_a_symlinked_cache_root(
    cache: Cache, tmp_path: Path
) -> None:
    """The cache folder itself may be a link (to a bigger disk): only folders below it count."""
    moved = tmp_path / "big-disk" / "cache"
    moved.parent.mkdir()
    shutil.move(cache.root, moved)
    cache.root.symlink_to(moved)
    assert draw.run(cache.root, str(cache.source), 1).cached and len(CALLS) == 1


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder any user can enter (pytest's own are the owner's only)."""
    folder = Path(tempfile.mkdtemp(prefix="segstyle-readonly-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


#: Runs ``draw`` on a cache it may not write to: root (who writes anywhere) reads a hit to load
#: everything, then goes on as the user ``nobody``.
READER = """
import os, sys
from pathlib import Path
from tests.test_cache_confinement import draw
root, source = Path(sys.argv[1]), sys.argv[2]
draw.run(root, source, 1)
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
record = draw.run(root, source, int(sys.argv[3]))
print("cached" if record.cached else "computed")
"""


def test_a_read_only_cache_serves_hits_and_refuses_a_recompute_in_one_line(
    shared_tmp: Path,
) -> None:
    CALLS.clear()
    source = shared_tmp / "image.bin"
    source.write_bytes(b"image bytes")
    root = shared_tmp / "out" / "cache"
    draw.run(root, str(source), 1)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)

    def read(setting: int) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(shared_tmp)}
        command = [sys.executable, "-c", READER, str(root), str(source), str(setting)]
        cwd = Path(__file__).parent.parent
        return subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120
        )

    hit = read(1)
    assert hit.returncode == 0 and hit.stdout.strip() == "cached", hit.stderr
    miss = read(2)
    assert miss.returncode == 1
    last = miss.stderr.strip().splitlines()[-1]
    assert last.startswith(f"segstyle_core.errors.StorageError: {root}: cannot write"), last
    assert "make the folder writable, or choose another outputs.out" in last
    assert len([p for p in root.glob("figures/*/*") if p.is_dir()]) == 1  # none for the miss


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated street photo (256×128 PNG)."""
    from segstyle_core.demo.dataset import generate_demo_dataset

    root = generate_demo_dataset(
        tmp_path_factory.mktemp("demo"), size=(256, 128), frames_per_city=1, cities=("zurich",)
    )
    return next((root / "leftImg8bit").rglob("*.png"))


def _stylize_box(photo: Path, out: Path, output: Path) -> int:
    """``segstyle stylize`` with the offline backends and one box, its cache in ``<out>/cache``."""
    return _stylize(photo, output, out, "--box", "10,10,120,100")


def _forge_composite(record: Path, path: str, digest: str, size: int) -> None:
    document = json.loads(record.read_text())
    document["outputs"]["composite"] = path
    document["sha256"]["composite"] = digest
    document["sizes"]["composite"] = size
    record.write_text(json.dumps(document))


@pytest.mark.parametrize("attack", ["a path out of the cache", "/dev/zero", "a link to it"])
def test_stylize_recomputes_a_forged_record_and_publishes_no_secret(
    photo: Path, tmp_path: Path, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    out, output = tmp_path / "work", tmp_path / "painted.png"
    assert _stylize_box(photo, out, output) == 0
    painted = output.read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (record,) = (out / "cache" / "composite").glob(f"*/*/{RECORD}")
    original = json.loads(record.read_text())
    digest = sha256_file(secret), len(SECRET)
    if attack == "a path out of the cache":
        _forge_composite(record, os.path.relpath(secret, out / "cache"), *digest)
    elif attack == "/dev/zero":
        _forge_composite(record, "/dev/zero", "0" * 64, HUGE)
    else:
        (record.parent / "composite.png").unlink()
        (record.parent / "composite.png").symlink_to(secret)
        _forge_composite(record, original["outputs"]["composite"], *digest)

    with caplog.at_level(logging.WARNING, logger="segstyle_core.stagecache"):
        assert within(60, lambda: _stylize_box(photo, out, output)) == 0
    assert output.read_bytes() == painted  # the composite computed again, the same
    assert json.loads(record.read_text()) == original  # the record rewritten
    assert sum(str(record) in message for message in caplog.messages) == 1
    assert secret.read_bytes() == SECRET
    assert not any(SECRET in p.read_bytes() for p in out.rglob("*") if p.is_file())
