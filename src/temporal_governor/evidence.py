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
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field
from temporalio.client import WorkflowHistory

from .control import Keyring, KeyringError
from .decisions import DecisionRecord
from .errors import GovernorError
from .policy import Policy
from .render import render_html
from .replay import ReviewError, _run_id_of, review
from .report import IncidentReport

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
"""The most a bundle may hold uncompressed (a larger one is refused unread)."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SHOWN_DIFFERENCES = 5


class EvidenceError(GovernorError):
    """A bundle could not be written, or the file to verify is not a bundle at all."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(_Frozen):
    """One thing wrong with a bundle: the file (and decision record) and what is wrong."""

    file: str
    """The file in the bundle, e.g. ``histories/002-child.json`` or ``manifest.json``."""
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
    """Write ``files`` as a zip, byte for byte the same for the same files."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise EvidenceError(f"cannot write {path}: {error.strerror or error}") from error


def write_bundle(
    report: IncidentReport,
    histories: Sequence[WorkflowHistory],
    path: str | os.PathLike[str],
    keyring: Keyring,
    key_id: str | None = None,
) -> Path:
    """Write a signed evidence bundle (a zip file) of a report and its histories.

    Args:
        report: The incident report (from :func:`~temporal_governor.replay.review`).
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


def _read_zip(path: Path) -> tuple[dict[str, bytes], list[Problem]]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            if sum(info.file_size for info in infos) > MAX_BUNDLE_BYTES:
                raise EvidenceError(f"{path}: holds more than {MAX_BUNDLE_BYTES} bytes")
            files: dict[str, bytes] = {}
            problems: list[Problem] = []
            for info in infos:
                if info.filename in files:
                    problems.append(Problem(file=info.filename, message="in the zip twice"))
                files[info.filename] = archive.read(info)
            return files, problems
    except (OSError, zipfile.BadZipFile) as error:
        raise EvidenceError(f"{path}: not a readable zip file ({error})") from error


def _read_folder(path: Path) -> dict[str, bytes]:
    return {
        file.relative_to(path).as_posix(): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def _read(path: Path) -> tuple[dict[str, bytes], list[Problem]]:
    """The files of a bundle (a zip, or the folder it was unzipped into)."""
    if path.is_dir():
        return _read_folder(path), []
    if not path.exists():
        raise EvidenceError(f"{path}: no such file")
    return _read_zip(path)


def _load_manifest(files: dict[str, bytes]) -> tuple[dict[str, Any], _Manifest] | str:
    """The manifest as signed and as parsed, or why it cannot be read."""
    data = files.get(MANIFEST)
    if data is None:
        return "missing: not an evidence bundle"
    try:
        raw = json.loads(data)
        manifest = _Manifest.model_validate(raw)
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


def _file_problems(manifest: _Manifest, files: dict[str, bytes]) -> list[Problem]:
    problems: list[Problem] = []
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        data = files.get(entry.path)
        if data is None:
            problems.append(Problem(file=entry.path, message="listed in the manifest but missing"))
        elif _sha256(data) != entry.sha256:
            problems.append(
                Problem(
                    file=entry.path,
                    message=f"changed: SHA-256 {_sha256(data)[:16]}... is not the manifest's "
                    f"{entry.sha256[:16]}... ({len(data)} bytes, manifest {entry.size})",
                )
            )
    for name in sorted(set(files) - listed - {MANIFEST}):
        problems.append(Problem(file=name, message="not listed in the manifest (not signed)"))
    needed = {REPORT_JSON, DECISIONS} | {h.path for h in manifest.histories}
    for name in sorted(needed - listed):
        problems.append(Problem(file=name, message="a bundle file the manifest does not list"))
    return problems


# --- the decision chain --------------------------------------------------------------------


def _records(data: bytes) -> tuple[list[_Record], list[Problem]]:
    records: list[_Record] = []
    problems: list[Problem] = []
    for line_number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        try:
            records.append(_Record.model_validate_json(line))
        except ValidationError:
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
    try:
        return IncidentReport.model_validate_json(files.get(REPORT_JSON, b""))
    except ValidationError:
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


def _inspect(path: Path, keyring: Keyring) -> tuple[BundleCheck, _Bundle | None]:
    files, problems = _read(path)
    loaded = _load_manifest(files)
    if isinstance(loaded, str):
        problems.append(Problem(file=MANIFEST, message=loaded))
        return BundleCheck(path=str(path), problems=problems), None
    raw, manifest = loaded
    problems += [
        Problem(file=MANIFEST, message=m) for m in _signature_problems(raw, manifest, keyring)
    ]
    problems += _file_problems(manifest, files)
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
        EvidenceError: ``path`` is missing, not a zip file, or too large.

    """
    return _inspect(Path(path), keyring)[0]


def _histories(bundle: _Bundle) -> tuple[list[WorkflowHistory], list[Problem]]:
    histories: list[WorkflowHistory] = []
    problems: list[Problem] = []
    for entry in bundle.manifest.histories:
        try:
            data = json.loads(bundle.files[entry.path])
            histories.append(WorkflowHistory.from_json(entry.workflow_id, data))
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
        EvidenceError: ``path`` is missing, not a zip file, or too large.

    """
    check, bundle = _inspect(Path(path), keyring)
    if bundle is None or not check.ok:
        return check
    histories, problems = _histories(bundle)
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
