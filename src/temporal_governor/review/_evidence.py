"""Signed evidence bundles: an incident report, its histories and its decisions, in one file.

A bundle is one zip file (deterministic: fixed timestamps, fixed order) holding

- ``manifest.json``: every other file with its SHA-256 and size, the bundled histories'
  workflow and run ids, the head of the decision chain, and an HMAC-SHA256 signature over
  the manifest's canonical form (sorted-key compact JSON, UTF-8, without ``signature``)
  with a key of the control :class:`~temporal_governor.control.Keyring`, named by
  ``key_id``;
- ``report.json`` and ``report.html``: the incident report and its rendering;
- ``decisions.jsonl``: the report's decisions, one hash-chained record a line: each
  record carries its number, the SHA-256 of the record before it (``prev``) and its own
  (``hash``), so changing, removing or reordering a record breaks the chain where it
  happened;
- ``histories/NNN-<workflow id>.json``: the histories the report was built from, as
  :meth:`temporalio.client.WorkflowHistory.to_json` writes them.

:func:`verify_bundle` checks a bundle offline (signature, file hashes, chain) and names
the file and record of every problem; :func:`replay_bundle` also replays the bundled
histories with the policy and workflow code and checks that they give the bundled
decisions and report.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import re
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Annotated, Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, computed_field
from temporalio.client import WorkflowHistory

from ..control._messages import Keyring, KeyringError
from ..core.decisions import DecisionRecord
from ..errors import GovernorError
from ..policy import Policy
from ._render import render_html
from ._replay import ReviewError, _run_id_of, review
from ._report import IncidentReport

FORMAT = "temporal-governor-evidence"
"""The manifest's ``format``."""
FORMAT_VERSION = 1
"""The manifest's ``version``: bumped when the layout or what is signed changes."""
ALGORITHM = "HMAC-SHA256"
"""How the manifest is signed."""
MANIFEST = "manifest.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
DECISIONS = "decisions.jsonl"
GENESIS = "0" * 64
"""The ``prev`` of the first decision record."""
MAX_BUNDLE_BYTES = 4 << 30
"""The most the files a manifest lists may hold together (a larger bundle is refused unread)."""
MAX_MANIFEST_BYTES = 1 << 20
"""The most ``manifest.json`` may hold (a larger one is refused unread)."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SHOWN_DIFFERENCES = 5


class EvidenceError(GovernorError):
    """A bundle cannot be written, or verified: not a bundle at all, or no key to check it."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(_Frozen):
    """One thing wrong with a bundle: the file (and decision record) and what is wrong."""

    file: str
    """The file in the bundle, e.g. ``histories/002-child.json``, or the zip file's name."""
    record: int | None = None
    """For ``decisions.jsonl``: the record's number, from 1."""
    message: str

    def __str__(self) -> str:
        """``file record N: message``."""
        where = self.file if self.record is None else f"{self.file} record {self.record}"
        return f"{where}: {self.message}"


class BundleCheck(_Frozen):
    """What verifying a bundle found."""

    path: str
    key_id: str | None = None
    """The key id the manifest names."""
    root_workflow_id: str | None = None
    files: int = 0
    """Files the manifest lists."""
    records: int = 0
    """Decision records in the chain."""
    replayed: bool = False
    """Whether the histories were replayed and compared (:func:`replay_bundle`)."""
    problems: list[Problem]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


_Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _FileEntry(_Frozen):
    path: str
    sha256: _Hex
    size: int


class _HistoryEntry(_Frozen):
    path: str
    workflow_id: str
    run_id: str


class _ChainHead(_Frozen):
    records: int
    head: _Hex


class _Manifest(_Frozen):
    format: str
    version: int
    created_by: str
    algorithm: str
    key_id: str
    root_workflow_id: str
    root_run_id: str
    files: list[_FileEntry]
    histories: list[_HistoryEntry]
    decisions: _ChainHead
    signature: _Hex | None = None


class _Record(_Frozen):
    index: int
    prev: _Hex
    hash: _Hex
    decision: dict[str, Any]


@dataclass
class _Bundle:
    files: dict[str, bytes]
    manifest: _Manifest
    records: list[_Record]


def _canonical(data: Any) -> bytes:
    """Sorted-key compact JSON, UTF-8: the bytes hashed and signed."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mac(secret: bytes, data: bytes) -> str:
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def _creator() -> str:
    try:
        return f"temporal-governor {version('temporal-governor')}"
    except PackageNotFoundError:
        return "temporal-governor"


# --- writing -------------------------------------------------------------------------------


def chain(decisions: Sequence[DecisionRecord]) -> list[str]:
    """The hash-chained records of ``decisions``: the lines of ``decisions.jsonl``.

    Record ``n`` (from 1) is ``{"index": n, "prev": <hash of record n-1>, "decision":
    ..., "hash": <SHA-256 of the record's canonical JSON without hash>}``; the first
    record's ``prev`` is :data:`GENESIS`.
    """
    lines: list[str] = []
    prev = GENESIS
    for index, decision in enumerate(decisions, start=1):
        body = {"index": index, "prev": prev, "decision": decision.model_dump(mode="json")}
        prev = _sha256(_canonical(body))
        lines.append(_canonical({**body, "hash": prev}).decode())
    return lines


def _slug(workflow_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", workflow_id)[:80]


def _history_entries(histories: Sequence[WorkflowHistory]) -> list[_HistoryEntry]:
    return [
        _HistoryEntry(
            path=f"histories/{number:03d}-{_slug(history.workflow_id)}.json",
            workflow_id=history.workflow_id,
            run_id=_run_id_of(history),
        )
        for number, history in enumerate(histories, start=1)
    ]


def _check_histories(report: IncidentReport, histories: Sequence[WorkflowHistory]) -> None:
    """Refuse histories that are not the ones the report was built from."""
    given = [(_run_id_of(h), len(h.events)) for h in histories]
    reported = [(run.run_id, run.history_events) for run in report.runs]
    if sorted(given) != sorted(reported):
        raise EvidenceError(
            "the histories are not the ones the report was built from (run ids and event "
            f"counts differ: report {len(reported)} runs, given {len(given)} histories)"
        )


def _signing_key(keyring: Keyring, key_id: str | None) -> str:
    kid = key_id or keyring.signing_key
    if kid is None or kid not in keyring.keys:
        known = ", ".join(sorted(keyring.keys)) or "none"
        raise KeyringError(
            f"no key {kid or ''!r} to sign the bundle with (keys: {known}): set "
            "$TEMPORAL_GOVERNOR_KEYS (key-id=secret) or control.keys_file in the policy"
        )
    return kid


def _contents(
    report: IncidentReport, histories: Sequence[WorkflowHistory], entries: list[_HistoryEntry]
) -> dict[str, bytes]:
    """Every file of the bundle but the manifest, in bundle order."""
    files = {
        REPORT_JSON: report.model_dump_json(indent=2).encode(),
        REPORT_HTML: render_html(report).encode(),
        DECISIONS: "".join(line + "\n" for line in chain(report.decisions)).encode(),
    }
    for entry, history in zip(entries, histories, strict=True):
        files[entry.path] = history.to_json().encode()
    return files


def _signed_manifest(
    report: IncidentReport,
    entries: list[_HistoryEntry],
    files: dict[str, bytes],
    keyring: Keyring,
    key_id: str,
) -> bytes:
    lines = files[DECISIONS].decode().splitlines()
    manifest = _Manifest(
        format=FORMAT,
        version=FORMAT_VERSION,
        created_by=_creator(),
        algorithm=ALGORITHM,
        key_id=key_id,
        root_workflow_id=report.root_workflow_id,
        root_run_id=report.root_run_id,
        files=[_FileEntry(path=p, sha256=_sha256(b), size=len(b)) for p, b in files.items()],
        histories=entries,
        decisions=_ChainHead(
            records=len(lines),
            head=json.loads(lines[-1])["hash"] if lines else GENESIS,
        ),
    ).model_dump(mode="json", exclude={"signature"})
    manifest["signature"] = _mac(keyring.keys[key_id], _canonical(manifest))
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as a zip, byte for byte the same for the same files.

    The zip is written to a new temporary file next to ``path`` (created exclusively, so
    nothing planted there is followed or overwritten), synced, then renamed onto ``path``;
    on any failure the temporary file is removed and ``path`` is left as it was.
    """
    try:
        fd, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial"
        )
    except OSError as error:
        raise EvidenceError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(fd, "wb") as stream:
            with zipfile.ZipFile(stream, "w") as archive:
                for name, data in files.items():
                    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.create_system = 3
                    info.external_attr = 0o644 << 16
                    archive.writestr(info, data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise EvidenceError(f"cannot write {path}: {error.strerror or error}") from error
        raise


def write_bundle(
    report: IncidentReport,
    histories: Sequence[WorkflowHistory],
    path: str | os.PathLike[str],
    keyring: Keyring,
    key_id: str | None = None,
) -> Path:
    """Write a signed evidence bundle (a zip file) of a report and its histories.

    Args:
        report: The incident report (from :func:`~temporal_governor.review.review`).
        histories: The histories the report was built from, root first.
        path: The zip file to write (replaced if it exists).
        keyring: The keys (e.g. ``Keyring.from_policy(policy)``).
        key_id: The key to sign with (default: the keyring's signing key).

    Returns:
        The path written.

    Raises:
        KeyringError: There is no such key to sign with.
        EvidenceError: The histories are not the report's, or the file cannot be written.

    """
    kid = _signing_key(keyring, key_id)
    _check_histories(report, histories)
    entries = _history_entries(histories)
    files = _contents(report, histories, entries)
    manifest = _signed_manifest(report, entries, files, keyring, kid)
    target = Path(path)
    _write_zip(target, {MANIFEST: manifest, **files})
    return target


# --- reading -------------------------------------------------------------------------------

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
"""A zip entry's local header (the fixed part, before its name and extra field)."""
_END = struct.Struct("<4s4H2LH")
"""The zip's end of central directory record."""
_END64 = struct.Struct("<4sQ2H2L4Q")
"""The zip64 end of central directory record (without extensible data)."""
_END64_LOCATOR = struct.Struct("<4sLQL")
_MAX_TAIL = (1 << 16) + _END.size
_CHUNK = 1 << 20
_CHAIN_SLACK = 1 << 20
"""How much longer than signed a ``decisions.jsonl`` is still read, to name its records."""


class _Source:
    """The members of a bundle (a zip, or the folder it was unzipped into), unread.

    ``sizes`` are the members' declared sizes (the zip's central directory, the folder's
    ``stat``), known before anything is read; ``problems`` are those of the container
    itself (bytes outside the zip's entries, a comment, directory entries with data).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.sizes: dict[str, int] = {}
        self._archive: zipfile.ZipFile | None = None
        self._infos: dict[str, zipfile.ZipInfo] = {}

    @classmethod
    @contextmanager
    def open(cls, path: Path) -> Iterator[_Source]:
        """The bundle at ``path``, open while the context lasts.

        Raises:
            EvidenceError: ``path`` is missing or not a zip file.

        """
        source = cls(path)
        if path.is_dir():
            source._list_folder()
            yield source
            return
        if not path.exists():
            raise EvidenceError(f"{path}: no such file")
        try:
            with path.open("rb") as stream, zipfile.ZipFile(stream) as archive:
                source._archive = archive
                source._list_zip(stream, archive)
                yield source
        except (OSError, zipfile.BadZipFile) as error:
            raise EvidenceError(f"{path}: not a readable zip file ({error})") from error

    def _list_folder(self) -> None:
        for file in sorted(self.path.rglob("*")):
            if file.is_file():
                self.sizes[file.relative_to(self.path).as_posix()] = file.stat().st_size

    def _list_zip(self, stream: BinaryIO, archive: zipfile.ZipFile) -> None:
        self.problems += [Problem(file=self.path.name, message=m) for m in _layout(stream, archive)]
        for info in archive.infolist():
            if info.comment:
                self._problem(info.filename, f"carries a zip comment of {len(info.comment)} bytes")
            if info.is_dir():
                if info.file_size or info.compress_size:
                    self._problem(
                        info.filename, f"a directory entry carrying {info.file_size} bytes"
                    )
                continue
            if info.filename in self._infos:
                self._problem(info.filename, "in the zip twice")
            self._infos[info.filename] = info
            self.sizes[info.filename] = info.file_size

    def _problem(self, name: str, message: str) -> None:
        self.problems.append(Problem(file=name, message=f"{message} (not signed)"))

    def read(self, name: str, size: int, *, keep: bool) -> tuple[str, int, bytes | None]:
        """Hash member ``name`` in chunks, reading at most ``size + 1`` bytes of it.

        Returns:
            Its SHA-256, the bytes read and, with ``keep``, those bytes.

        Raises:
            OSError: The member cannot be read (zipfile's errors are turned into it).

        """
        digest = hashlib.sha256()
        kept: list[bytes] = []
        total = 0
        try:
            with self._member(name) as stream:
                while total <= size and (chunk := stream.read(min(_CHUNK, size + 1 - total))):
                    digest.update(chunk)
                    total += len(chunk)
                    if keep:
                        kept.append(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise OSError(str(error)) from error
        return digest.hexdigest(), total, b"".join(kept) if keep else None

    def _member(self, name: str) -> IO[bytes]:
        if self._archive is not None:
            return self._archive.open(self._infos[name])
        return (self.path / name).open("rb")


def _layout(stream: BinaryIO, archive: zipfile.ZipFile) -> list[str]:
    """What in the zip file is not one of its entries, its central directory and its end.

    A bundle is exactly its entries, one after the other from byte 0, then the central
    directory, then the end record (zip64 records included) ending the file: bytes before,
    between or after them, and a zip comment, are not signed, and a tool reading the file
    from its start (or its end) could be shown something else than what was verified.
    """
    problems: list[str] = []
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - _MAX_TAIL))
    tail = stream.read()
    end = len(tail) - _END.size
    while end >= 0 and tail[end : end + 4] != b"PK\x05\x06":
        end = tail.rfind(b"PK\x05\x06", 0, end + 3)
    if end < 0:
        return ["no end of central directory record"]
    end_at = size - len(tail) + end
    fields = _END.unpack_from(tail, end)
    cd_size, comment = int(fields[5]), int(fields[7])
    if archive.comment:
        problems.append(f"a zip comment of {len(archive.comment)} bytes (not signed)")
    after = size - (end_at + _END.size + comment)
    if after > 0:
        problems.append(f"{after} bytes after the end of the zip (appended, not signed)")
    cd_end = end_at
    locator_at = end_at - _END64_LOCATOR.size
    if locator_at >= _END64.size:
        stream.seek(locator_at)
        if stream.read(4) == b"PK\x06\x07":
            cd_end = locator_at - _END64.size
            stream.seek(cd_end)
            cd_size = int(_END64.unpack(stream.read(_END64.size))[7])
    position = 0
    for info in sorted(archive.infolist(), key=lambda i: i.header_offset):
        if info.header_offset != position:
            gap = info.header_offset - position
            problems.append(
                f"{gap} bytes before the first zip entry (prepended, not signed)"
                if position == 0 and gap > 0
                else f"{info.filename}: its zip entry is not right after the one before it "
                f"({gap:+} bytes, not signed)"
            )
        position = _entry_end(stream, info)
    if archive.start_dir != position:
        problems.append(
            f"{archive.start_dir - position:+} bytes between the last zip entry and the "
            "central directory (not signed)"
        )
    if archive.start_dir + cd_size != cd_end:
        problems.append(
            f"{cd_end - archive.start_dir - cd_size:+} bytes between the central directory "
            "and its end record (not signed)"
        )
    return problems


def _entry_end(stream: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where the zip entry ``info`` (local header, data, data descriptor) ends."""
    stream.seek(info.header_offset)
    header = stream.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"{info.filename}: no local header where the directory says")
    fields = _LOCAL_HEADER.unpack(header)
    flags, name_length, extra_length = int(fields[3]), int(fields[10]), int(fields[11])
    end = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    end += info.compress_size
    if flags & 0x08:  # a data descriptor follows: [signature] crc, sizes (8 bytes if zip64)
        extra = stream.read(name_length + extra_length)[name_length:]
        zip64 = any(
            int.from_bytes(extra[i : i + 2], "little") == 1 for i in _extra_field_offsets(extra)
        )
        stream.seek(end)
        end += (4 if stream.read(4) == b"PK\x07\x08" else 0) + (20 if zip64 else 12)
    return end


def _extra_field_offsets(extra: bytes) -> list[int]:
    offsets: list[int] = []
    i = 0
    while i + 4 <= len(extra):
        offsets.append(i)
        i += 4 + int.from_bytes(extra[i + 2 : i + 4], "little")
    return offsets


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refusing a key given twice (parsers disagree on which wins)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _loads(data: bytes | str) -> Any:
    """Strict JSON: UTF-8, and no object with a key given twice.

    Raises:
        ValueError: ``data`` is not such JSON.

    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=_unique_keys)


def _load_manifest(source: _Source) -> tuple[dict[str, Any], _Manifest] | str:
    """The manifest as signed and as parsed, or why it cannot be read."""
    size = source.sizes.get(MANIFEST)
    if size is None:
        return "missing: not an evidence bundle"
    if size > MAX_MANIFEST_BYTES:
        return f"{size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may hold (unread)"
    try:
        data = source.read(MANIFEST, size, keep=True)[2] or b""
        raw = _loads(data)
        manifest = _Manifest.model_validate(raw)
    except OSError as error:
        return f"unreadable ({error})"
    except ValueError as error:  # pydantic's ValidationError is one
        return f"not a valid manifest ({' '.join(str(error).split())[:300]})"
    if (manifest.format, manifest.version) != (FORMAT, FORMAT_VERSION):
        return (
            f"format {manifest.format!r} version {manifest.version} "
            f"(this verifier reads {FORMAT!r} version {FORMAT_VERSION})"
        )
    return raw, manifest


def _signature_problems(raw: dict[str, Any], manifest: _Manifest, keyring: Keyring) -> list[str]:
    if manifest.algorithm != ALGORITHM:
        return [f"signed with {manifest.algorithm!r}, expected {ALGORITHM}"]
    if manifest.signature is None:
        return ["unsigned"]
    if manifest.key_id not in keyring.keys:
        known = ", ".join(sorted(keyring.keys)) or "none"
        return [f"signed with unknown key id {manifest.key_id!r} (known: {known})"]
    signed = _canonical({k: v for k, v in raw.items() if k != "signature"})
    if not hmac.compare_digest(_mac(keyring.keys[manifest.key_id], signed), manifest.signature):
        return [
            f"bad signature for key id {manifest.key_id!r}: the manifest was changed, or "
            "signed with another secret under that id"
        ]
    return []


def _listing_problems(manifest: _Manifest, source: _Source) -> list[Problem]:
    """Members the manifest does not list (named, never read), bundle files it omits."""
    listed = {entry.path for entry in manifest.files}
    total = sum(entry.size for entry in manifest.files)
    if total > MAX_BUNDLE_BYTES:
        raise EvidenceError(
            f"{source.path}: its manifest lists {total} bytes, more than the "
            f"{MAX_BUNDLE_BYTES} a bundle may hold"
        )
    problems = [
        Problem(file=name, message="not listed in the manifest (not signed)")
        for name in sorted(set(source.sizes) - listed - {MANIFEST})
    ]
    needed = {REPORT_JSON, DECISIONS} | {h.path for h in manifest.histories}
    for name in sorted(needed - listed):
        problems.append(Problem(file=name, message="a bundle file the manifest does not list"))
    return problems


def _member(
    source: _Source, entry: _FileEntry, *, keep: bool
) -> tuple[bytes | None, Problem | None]:
    """Member ``entry.path``, hashed in chunks and checked against the manifest.

    A member whose declared size is not the signed one is refused unread, but for
    ``decisions.jsonl`` up to :data:`_CHAIN_SLACK` bytes longer (read, so that the chain
    can name the records removed, inserted or changed).

    Returns:
        With ``keep``, its bytes (also when changed, if read); what is wrong with it.

    """
    size = source.sizes.get(entry.path)
    if size is None:
        return None, Problem(file=entry.path, message="listed in the manifest but missing")
    readable = entry.size + (_CHAIN_SLACK if entry.path == DECISIONS else 0)
    if size != entry.size and (entry.path != DECISIONS or size > readable):
        return None, Problem(
            file=entry.path,
            message=f"changed: {size} bytes, the manifest's {entry.size} (refused unread)",
        )
    try:
        digest, read, data = source.read(entry.path, max(size, entry.size), keep=keep)
    except OSError as error:
        return None, Problem(file=entry.path, message=f"unreadable ({error})")
    if read != entry.size or digest != entry.sha256:
        return data, Problem(
            file=entry.path,
            message=f"changed: SHA-256 {digest[:16]}... is not the manifest's "
            f"{entry.sha256[:16]}... ({read} bytes, manifest {entry.size})",
        )
    return data, None


def _file_problems(manifest: _Manifest, source: _Source) -> tuple[dict[str, bytes], list[Problem]]:
    """Every listed member's hash checked; the report and the decisions kept."""
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    for entry in manifest.files:
        data, problem = _member(source, entry, keep=entry.path in (REPORT_JSON, DECISIONS))
        if problem is not None:
            problems.append(problem)
        if data is not None:
            files[entry.path] = data
    return files, problems


# --- the decision chain --------------------------------------------------------------------


def _records(data: bytes) -> tuple[list[_Record], list[Problem]]:
    records: list[_Record] = []
    problems: list[Problem] = []
    for line_number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        try:
            _loads(line)  # refuses a key given twice
            records.append(_Record.model_validate_json(line))
        except ValueError:  # pydantic's ValidationError is one
            problems.append(
                Problem(file=DECISIONS, message=f"line {line_number} is not a chain record")
            )
    return records, problems


def _what(record: _Record) -> str:
    decision = record.decision
    return (
        f"{decision.get('kind', '?')} #{decision.get('seq', '?')} of "
        f"{decision.get('agent', '?')}/{decision.get('workflow_id', '?')}"
    )


def _hash_problems(records: list[_Record]) -> list[Problem]:
    return [
        Problem(
            file=DECISIONS,
            record=record.index,
            message=f"changed: the record ({_what(record)}) does not match its hash",
        )
        for record in records
        if _sha256(_canonical(record.model_dump(exclude={"hash"}))) != record.hash
    ]


def _order_problems(records: list[_Record], count: int) -> list[Problem]:
    problems: list[Problem] = []
    present = [record.index for record in records]
    seen = Counter(present)
    for index in sorted(set(range(1, count + 1)) - set(present)):
        problems.append(Problem(file=DECISIONS, record=index, message="missing (removed)"))
    for index in sorted({i for i in present if seen[i] > 1 or not 1 <= i <= count}):
        problems.append(
            Problem(
                file=DECISIONS,
                record=index,
                message=f"duplicated, or beyond the manifest's {count} records (inserted)",
            )
        )
    for before, after in itertools.pairwise(present):
        if after < before:
            problems.append(
                Problem(
                    file=DECISIONS,
                    record=after,
                    message=f"out of order: comes after record {before} (records reordered)",
                )
            )
    return problems


def _link_problems(records: list[_Record]) -> list[Problem]:
    """Broken ``prev`` links between records numbered one after the other."""
    problems: list[Problem] = []
    previous = _Record(index=0, prev=GENESIS, hash=GENESIS, decision={})
    for record in records:
        if record.index == previous.index + 1 and record.prev != previous.hash:
            problems.append(
                Problem(
                    file=DECISIONS,
                    record=record.index,
                    message=f"does not follow record {previous.index}: the hash it carries of "
                    "the record before it does not match (that record was replaced)",
                )
            )
        previous = record
    return problems


def _chain_problems(records: list[_Record], head: _ChainHead) -> list[Problem]:
    problems = _hash_problems(records)
    problems += _order_problems(records, head.records)
    problems += _link_problems(records)
    last = records[-1].hash if records else GENESIS
    if not problems and last != head.head:
        problems.append(
            Problem(
                file=DECISIONS,
                message="the chain's last hash is not the head the manifest signs (rebuilt)",
            )
        )
    return problems


# --- the report ----------------------------------------------------------------------------


def _report(files: dict[str, bytes]) -> IncidentReport | None:
    data = files.get(REPORT_JSON, b"")
    try:
        _loads(data)  # refuses a key given twice
        return IncidentReport.model_validate_json(data)
    except ValueError:  # pydantic's ValidationError is one
        return None


def _report_problems(bundle: _Bundle) -> list[Problem]:
    """Whether ``report.json`` is a report of the manifest's tree with the chained decisions."""
    report = _report(bundle.files)
    if report is None:
        return [Problem(file=REPORT_JSON, message="not an incident report")]
    problems: list[Problem] = []
    if (report.root_workflow_id, report.root_run_id) != (
        bundle.manifest.root_workflow_id,
        bundle.manifest.root_run_id,
    ):
        problems.append(Problem(file=REPORT_JSON, message="its root run is not the manifest's"))
    if sorted(run.run_id for run in report.runs) != sorted(
        h.run_id for h in bundle.manifest.histories
    ):
        problems.append(Problem(file=REPORT_JSON, message="its runs are not the bundled histories"))
    chained = [record.decision for record in bundle.records]
    reported = [decision.model_dump(mode="json") for decision in report.decisions]
    if chained != reported:
        first = next(
            (n for n, (a, b) in enumerate(zip(chained, reported, strict=False), 1) if a != b),
            min(len(chained), len(reported)) + 1,
        )
        problems.append(
            Problem(
                file=REPORT_JSON,
                message=f"its decisions are not the chained records (first difference at "
                f"record {first})",
            )
        )
    return problems


# --- verifying -----------------------------------------------------------------------------


def _require_keys(keyring: Keyring) -> None:
    if not keyring.keys:
        raise EvidenceError(
            "no control keys are configured to verify the bundle with: set "
            "$TEMPORAL_GOVERNOR_KEYS (key-id=secret,...) or control.keys_file in the policy "
            "(verify-bundle --policy)"
        )


def _inspect(source: _Source, keyring: Keyring) -> tuple[BundleCheck, _Bundle | None]:
    """Check the manifest and its signature first, then only the members it lists."""
    path = source.path
    problems = list(source.problems)
    loaded = _load_manifest(source)
    if isinstance(loaded, str):
        problems.append(Problem(file=MANIFEST, message=loaded))
        return BundleCheck(path=str(path), problems=problems), None
    raw, manifest = loaded
    unsigned = _signature_problems(raw, manifest, keyring)
    if unsigned:  # nothing the manifest says can be trusted: read nothing more
        problems += [Problem(file=MANIFEST, message=m) for m in unsigned]
        check = BundleCheck(
            path=str(path),
            key_id=manifest.key_id,
            root_workflow_id=manifest.root_workflow_id,
            files=len(manifest.files),
            problems=problems,
        )
        return check, None
    problems += _listing_problems(manifest, source)
    files, changed = _file_problems(manifest, source)
    problems += changed
    records, unreadable = _records(files.get(DECISIONS, b""))
    problems += unreadable + _chain_problems(records, manifest.decisions)
    bundle = _Bundle(files, manifest, records)
    if not problems:
        problems += _report_problems(bundle)
    check = BundleCheck(
        path=str(path),
        key_id=manifest.key_id,
        root_workflow_id=manifest.root_workflow_id,
        files=len(manifest.files),
        records=len(records),
        problems=problems,
    )
    return check, bundle


def verify_bundle(path: str | os.PathLike[str], keyring: Keyring) -> BundleCheck:
    """Check a bundle offline: its signature, every file's hash, the decision chain.

    ``path`` is a bundle's zip file, or the folder it was unzipped into. Every problem
    names the file (and for ``decisions.jsonl`` the record) it is about; the checks of the
    report against the chain run only when everything else holds.

    Args:
        path: The bundle.
        keyring: The keys that may have signed it.

    Returns:
        What was found; ``check.ok`` when nothing is wrong.

    Raises:
        EvidenceError: ``keyring`` holds no key, or ``path`` is missing, not a zip file,
            or too large.

    """
    _require_keys(keyring)
    with _Source.open(Path(path)) as source:
        return _inspect(source, keyring)[0]


def _histories(source: _Source, bundle: _Bundle) -> tuple[list[WorkflowHistory], list[Problem]]:
    """The bundled histories, read (and their hashes checked) again."""
    histories: list[WorkflowHistory] = []
    problems: list[Problem] = []
    entries = {entry.path: entry for entry in bundle.manifest.files}
    for entry in bundle.manifest.histories:
        data, problem = _member(source, entries[entry.path], keep=True)
        if problem is not None or data is None:
            problems.append(problem or Problem(file=entry.path, message="unreadable"))
            continue
        try:
            parsed = _loads(data)
            histories.append(WorkflowHistory.from_json(entry.workflow_id, parsed))
        except Exception as error:  # whatever a malformed history makes the SDK's parser raise
            problems.append(Problem(file=entry.path, message=f"not history JSON ({error})"))
    return histories, problems


def _differing_fields(bundled: dict[str, Any], replayed: dict[str, Any]) -> str:
    fields = sorted(
        k for k in bundled.keys() | replayed.keys() if bundled.get(k) != replayed.get(k)
    )
    return "; ".join(
        f"{k} {bundled.get(k)!r} in the bundle, {replayed.get(k)!r} by replay" for k in fields
    )


def _not_replaying(bundle: _Bundle, replayed: IncidentReport) -> list[Problem]:
    path_of = {entry.run_id: entry.path for entry in bundle.manifest.histories}
    return [
        Problem(file=path_of.get(run.run_id, "histories/"), message=f"does not replay: {why}")
        for run in replayed.runs
        if (why := run.replay_error)
    ]


def _records_unlike_replay(bundle: _Bundle, replayed: IncidentReport) -> list[Problem]:
    """The records that differ from the decisions replay rebuilt (the first few)."""
    chained = [record.decision for record in bundle.records]
    rebuilt = [decision.model_dump(mode="json") for decision in replayed.decisions]
    differing = [
        (n, a, b) for n, (a, b) in enumerate(zip(chained, rebuilt, strict=False), 1) if a != b
    ]
    problems = [
        Problem(file=DECISIONS, record=n, message=f"differs from replay: {_differing_fields(a, b)}")
        for n, a, b in differing[:_SHOWN_DIFFERENCES]
    ]
    if len(differing) > _SHOWN_DIFFERENCES:
        more = len(differing) - _SHOWN_DIFFERENCES
        problems.append(Problem(file=DECISIONS, message=f"{more} more records differ from replay"))
    if len(chained) != len(rebuilt):
        problems.append(
            Problem(file=DECISIONS, message=f"{len(chained)} records, replay gives {len(rebuilt)}")
        )
    return problems


def _report_unlike_replay(bundle: _Bundle, replayed: IncidentReport) -> list[Problem]:
    report = _report(bundle.files)
    if report is None:
        return [Problem(file=REPORT_JSON, message="not an incident report")]
    mine = report.model_dump(exclude={"source"})
    theirs = replayed.model_dump(exclude={"source"})
    fields = sorted(k for k in mine if mine[k] != theirs.get(k))
    if not fields:
        return []
    return [Problem(file=REPORT_JSON, message=f"differs from replay in {', '.join(fields)}")]


def _replay_problems(bundle: _Bundle, replayed: IncidentReport) -> list[Problem]:
    """How the replayed report differs from the bundled records and report."""
    problems = _not_replaying(bundle, replayed) + _records_unlike_replay(bundle, replayed)
    return problems or _report_unlike_replay(bundle, replayed)


async def replay_bundle(
    path: str | os.PathLike[str],
    keyring: Keyring,
    *,
    policy: Policy,
    workflows: Sequence[type],
    sandboxed: bool = False,
) -> BundleCheck:
    """Verify a bundle, then replay its histories and compare what they give with it.

    The deeper check: the decision records (and the report) must be exactly what replaying
    the bundled histories with ``policy`` and ``workflows`` rebuilds, so a key holder who
    signed decisions the histories do not support is caught too. Replay runs only when
    :func:`verify_bundle` found nothing wrong (``check.replayed`` says whether it ran).

    Args:
        path: The bundle (zip file or folder).
        keyring: The keys that may have signed it.
        policy: The policy the runs were governed by.
        workflows: The workflow classes of the tree.
        sandboxed: Replay inside the workflow sandbox.

    Returns:
        What was found.

    Raises:
        EvidenceError: ``keyring`` holds no key, or ``path`` is missing, not a zip file,
            or too large.

    """
    _require_keys(keyring)
    with _Source.open(Path(path)) as source:
        check, bundle = _inspect(source, keyring)
        if bundle is None or not check.ok:
            return check
        histories, problems = _histories(source, bundle)
    if problems:
        return check.model_copy(update={"problems": problems})
    try:
        replayed = await review(
            bundle.manifest.root_workflow_id,
            policy=policy,
            workflows=workflows,
            histories=histories,
            sandboxed=sandboxed,
        )
    except ReviewError as error:
        return check.model_copy(
            update={"problems": [Problem(file="histories/", message=str(error))]}
        )
    return check.model_copy(
        update={"replayed": True, "problems": _replay_problems(bundle, replayed)}
    )


__all__ = [
    "ALGORITHM",
    "DECISIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "GENESIS",
    "MANIFEST",
    "MAX_BUNDLE_BYTES",
    "MAX_MANIFEST_BYTES",
    "REPORT_HTML",
    "REPORT_JSON",
    "BundleCheck",
    "EvidenceError",
    "Problem",
    "chain",
    "replay_bundle",
    "verify_bundle",
    "write_bundle",
]
