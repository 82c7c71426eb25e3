"""Signed evidence bundles: a reviewed runaway's bundle verifies; every tampering is named."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from examples.agents import Executor, Planner

from conftest import RUNAWAY_POLICY as POLICY
from temporal_governor.control import Keyring, KeyringError
from temporal_governor.core.decisions import DecisionRecord
from temporal_governor.review import (
    BundleCheck,
    EvidenceError,
    load_histories,
    replay_bundle,
    review,
    verify_bundle,
    write_bundle,
)
from temporal_governor.review._evidence import (
    DECISIONS,
    MANIFEST,
    REPORT_HTML,
    REPORT_JSON,
    Problem,
    chain,
)

WORKFLOWS = [Planner, Executor]
# `runaway` (conftest.py): the session's one runaway planner tree under POLICY, halted; the
# incident review tests (test_replay.py) use the same tree when they run in the same process

# the session's control keys ($TEMPORAL_GOVERNOR_KEYS, set by conftest), as the CLI reads them
KEYRING = Keyring.from_policy(POLICY)


@pytest.fixture(scope="module")
async def reviewed(runaway):
    histories = load_histories(runaway["files"], runaway["id"])
    report = await review(runaway["id"], policy=POLICY, workflows=WORKFLOWS, histories=histories)
    assert report.breaches and not report.nondeterminism
    return report, histories


@pytest.fixture(scope="module")
def bundle(reviewed, tmp_path_factory) -> Path:
    report, histories = reviewed
    return write_bundle(report, histories, tmp_path_factory.mktemp("bundle") / "b.zip", KEYRING)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rewrite(bundle: Path, out: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """A copy of the bundle whose files ``change`` edited in place."""
    files = members(bundle)
    change(files)
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out


def records(files: dict[str, bytes]) -> list[dict]:
    return [json.loads(line) for line in files[DECISIONS].decode().splitlines()]


def put_records(files: dict[str, bytes], lines: list[dict]) -> None:
    files[DECISIONS] = "".join(
        json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in lines
    ).encode()


def a_commit(files: dict[str, bytes]) -> int:
    """The number of a commit record in the middle of the chain (not first, not last)."""
    lines = records(files)
    middle = [r for r in lines[1:-1] if r["decision"]["kind"] == "commit"]
    assert middle, "the runaway made no commit to tamper with"
    return middle[len(middle) // 2]["index"]


def named(check: BundleCheck) -> set[tuple[str, int | None]]:
    return {(p.file, p.record) for p in check.problems}


def test_a_reviewed_runaway_bundle_verifies_and_holds_what_the_report_was_built_from(
    bundle: Path, reviewed
) -> None:
    report, histories = reviewed
    check = verify_bundle(bundle, KEYRING)
    assert check.ok, [str(p) for p in check.problems]
    assert check.key_id == KEYRING.signing_key
    assert check.root_workflow_id == report.root_workflow_id
    assert check.records == len(report.decisions) > 0
    files = members(bundle)
    names = list(files)
    assert names[:4] == [MANIFEST, REPORT_JSON, REPORT_HTML, DECISIONS]
    assert check.files == len(names) - 1 == 3 + len(histories)
    bundled = [json.loads(files[n]) for n in names[4:]]
    assert bundled == [json.loads(h.to_json()) for h in histories]
    assert [r["decision"] for r in records(files)] == [
        d.model_dump(mode="json") for d in report.decisions
    ]
    assert json.loads(files[REPORT_JSON]) == json.loads(report.model_dump_json())
    # each record carries the previous record's hash
    chain = records(files)
    assert [r["prev"] for r in chain[1:]] == [r["hash"] for r in chain[:-1]]
    assert json.loads(files[MANIFEST])["decisions"]["head"] == chain[-1]["hash"]


def test_writing_the_same_report_twice_gives_the_same_bytes(bundle: Path, reviewed, tmp_path):
    report, histories = reviewed
    again = write_bundle(report, histories, tmp_path / "again.zip", KEYRING)
    assert again.read_bytes() == bundle.read_bytes()
    with zipfile.ZipFile(again) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_flipping_one_byte_of_a_history_names_that_history(bundle: Path, tmp_path) -> None:
    files = members(bundle)
    history = [n for n in files if n.startswith("histories/")][-1]

    def flip(files: dict[str, bytes]) -> None:
        data = bytearray(files[history])
        data[len(data) // 2] ^= 0x01
        files[history] = bytes(data)

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", flip), KEYRING)
    assert [(p.file, p.record) for p in check.problems] == [(history, None)]
    assert check.problems[0].message.startswith("changed: SHA-256")


def test_editing_one_decisions_number_names_that_record(bundle: Path, tmp_path) -> None:
    number = a_commit(members(bundle))

    def edit(files: dict[str, bytes]) -> None:
        lines = records(files)
        amounts = lines[number - 1]["decision"]["amounts"]
        amounts["tokens"] = amounts.get("tokens", 0) + 1
        put_records(files, lines)

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", edit), KEYRING)
    assert named(check) == {(DECISIONS, None), (DECISIONS, number)}
    [problem] = [p for p in check.problems if p.record == number]
    assert problem.message.startswith("changed: the record (commit #")
    assert "does not match its hash" in problem.message


def test_a_record_edited_and_rehashed_breaks_the_link_of_the_next(bundle: Path, tmp_path) -> None:
    import hashlib

    number = a_commit(members(bundle))

    def edit(files: dict[str, bytes]) -> None:
        lines = records(files)
        record = lines[number - 1]
        record["decision"]["amounts"]["tokens"] = 1.0
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        record["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
        put_records(files, lines)

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", edit), KEYRING)
    assert named(check) == {(DECISIONS, None), (DECISIONS, number + 1)}
    [problem] = [p for p in check.problems if p.record]
    assert problem.message.startswith(f"does not follow record {number}")


def test_a_chain_rebuilt_after_an_edit_does_not_end_at_the_signed_head(bundle, tmp_path) -> None:
    number = a_commit(members(bundle))

    def rebuild(files: dict[str, bytes]) -> None:
        decisions = [DecisionRecord.model_validate(r["decision"]) for r in records(files)]
        decisions[number - 1] = decisions[number - 1].model_copy(update={"amounts": {}})
        files[DECISIONS] = "".join(line + "\n" for line in chain(decisions)).encode()

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", rebuild), KEYRING)
    assert [str(p) for p in check.problems][1:] == [
        f"{DECISIONS}: the chain's last hash is not the head the manifest signs (rebuilt)"
    ]
    assert named(check) == {(DECISIONS, None)}


@pytest.mark.parametrize("where", ["middle", "last"])
def test_dropping_a_record_names_it_missing(bundle: Path, tmp_path, where: str) -> None:
    files = members(bundle)
    number = a_commit(files) if where == "middle" else len(records(files))

    def drop(files: dict[str, bytes]) -> None:
        put_records(files, [r for r in records(files) if r["index"] != number])

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", drop), KEYRING)
    assert named(check) == {(DECISIONS, None), (DECISIONS, number)}
    assert Problem(file=DECISIONS, record=number, message="missing (removed)") in check.problems


def test_reordering_two_records_names_them(bundle: Path, tmp_path) -> None:
    number = a_commit(members(bundle))

    def swap(files: dict[str, bytes]) -> None:
        lines = records(files)
        lines[number - 1], lines[number] = lines[number], lines[number - 1]
        put_records(files, lines)

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", swap), KEYRING)
    assert named(check) == {(DECISIONS, None), (DECISIONS, number)}
    [problem] = [p for p in check.problems if p.record]
    assert problem.message == f"out of order: comes after record {number + 1} (records reordered)"


def test_editing_the_report_names_the_report(bundle: Path, tmp_path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        report = json.loads(files[REPORT_JSON])
        report["breaches"][0]["breach"]["observed"] /= 2
        files[REPORT_JSON] = json.dumps(report, indent=2).encode()

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", edit), KEYRING)
    assert named(check) == {(REPORT_JSON, None)}
    assert check.problems[0].message.startswith("changed: SHA-256")


def test_a_history_changed_with_its_manifest_hash_fails_the_signature(
    bundle: Path, tmp_path
) -> None:
    import hashlib

    files = members(bundle)
    history = next(n for n in files if n.startswith("histories/"))

    def forge(files: dict[str, bytes]) -> None:
        files[history] = files[history].replace(b'"eventId": "1"', b'"eventId": "01"', 1)
        assert files[history] != members(bundle)[history]
        manifest = json.loads(files[MANIFEST])
        for entry in manifest["files"]:
            if entry["path"] == history:
                entry["sha256"] = hashlib.sha256(files[history]).hexdigest()
                entry["size"] = len(files[history])
        files[MANIFEST] = json.dumps(manifest, indent=2).encode()

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", forge), KEYRING)
    assert named(check) == {(MANIFEST, None)}
    assert check.problems[0].message.startswith(f"bad signature for key id {check.key_id!r}")


def resign(files: dict[str, bytes], name: str) -> None:
    """What a key holder can do: update ``name``'s hash in the manifest and sign it again.

    Written from the documented format (HMAC-SHA256 over the manifest's sorted-key compact
    JSON without ``signature``), independently of the module.
    """
    import hashlib
    import hmac

    manifest = json.loads(files[MANIFEST])
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"] = hashlib.sha256(files[name]).hexdigest()
            entry["size"] = len(files[name])
    del manifest["signature"]
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    secret = KEYRING.keys[manifest["key_id"]]
    manifest["signature"] = hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()
    files[MANIFEST] = json.dumps(manifest).encode()


def test_a_re_signed_report_whose_decisions_are_not_the_chain_is_named(bundle, tmp_path) -> None:
    number = a_commit(members(bundle))

    def edit(files: dict[str, bytes]) -> None:
        report = json.loads(files[REPORT_JSON])
        report["decisions"][number - 1]["amounts"] = {"tokens": 1.0}
        files[REPORT_JSON] = json.dumps(report).encode()
        resign(files, REPORT_JSON)

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", edit), KEYRING)
    assert [str(p) for p in check.problems] == [
        f"{REPORT_JSON}: its decisions are not the chained records (first difference at "
        f"record {number})"
    ]


def test_the_signature_can_be_checked_from_the_documented_format(bundle, tmp_path) -> None:
    def nothing(files: dict[str, bytes]) -> None:
        resign(files, REPORT_JSON)  # same hashes, signed again independently

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", nothing), KEYRING)
    assert check.ok, [str(p) for p in check.problems]


def test_a_bundle_signed_with_another_secret_fails_the_signature(reviewed, tmp_path) -> None:
    report, histories = reviewed
    kid = KEYRING.signing_key
    assert kid is not None
    wrong = Keyring({kid: b"not the secret the verifier knows"})
    check = verify_bundle(write_bundle(report, histories, tmp_path / "w.zip", wrong), KEYRING)
    assert named(check) == {(MANIFEST, None)}
    assert check.problems[0].message.startswith(f"bad signature for key id {kid!r}")


def test_a_bundle_signed_with_an_unknown_key_id_names_the_key(reviewed, tmp_path) -> None:
    report, histories = reviewed
    stranger = Keyring({"stranger": b"some secret"})
    check = verify_bundle(write_bundle(report, histories, tmp_path / "u.zip", stranger), KEYRING)
    assert [str(p) for p in check.problems] == [
        f"{MANIFEST}: signed with unknown key id 'stranger' (known: {KEYRING.signing_key})"
    ]


def unzipped(bundle: Path, tmp_path: Path) -> Path:
    """The folder the bundle was unzipped into."""
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(folder)
    return folder


def test_an_unzipped_bundle_verifies_and_an_added_file_is_named(bundle: Path, tmp_path) -> None:
    folder = unzipped(bundle, tmp_path)
    assert verify_bundle(folder, KEYRING).ok
    (folder / "histories" / "extra.json").write_text("{}")
    check = verify_bundle(folder, KEYRING)
    assert [str(p) for p in check.problems] == [
        "histories/extra.json: not listed in the manifest (not signed)"
    ]


def test_not_a_bundle_is_refused(tmp_path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_text("not a zip")
    with pytest.raises(EvidenceError, match="not a readable zip file"):
        verify_bundle(junk, KEYRING)
    empty = rewrite_empty(tmp_path / "empty.zip")
    assert [str(p) for p in verify_bundle(empty, KEYRING).problems] == [
        f"{MANIFEST}: missing: not an evidence bundle"
    ]


def rewrite_empty(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return path


def test_writing_refuses_histories_the_report_was_not_built_from(reviewed, tmp_path) -> None:
    report, histories = reviewed
    with pytest.raises(EvidenceError, match="not the ones the report was built from"):
        write_bundle(report, histories[:-1], tmp_path / "x.zip", KEYRING)
    with pytest.raises(KeyringError, match="no key 'nope'"):
        write_bundle(report, histories, tmp_path / "x.zip", KEYRING, key_id="nope")
    assert not (tmp_path / "x.zip").exists()


async def test_replaying_the_bundle_gives_its_decisions(bundle: Path) -> None:
    check = await replay_bundle(bundle, KEYRING, policy=POLICY, workflows=WORKFLOWS)
    assert check.replayed and check.ok, [str(p) for p in check.problems]


async def test_replay_catches_decisions_a_key_holder_signed_that_history_does_not_give(
    reviewed, tmp_path
) -> None:
    report, histories = reviewed
    commits = [n for n, d in enumerate(report.decisions, 1) if d.kind == "commit"]
    number = commits[len(commits) // 2]
    decisions = list(report.decisions)
    honest = decisions[number - 1]
    decisions[number - 1] = honest.model_copy(update={"amounts": {"tokens": 1.0}})
    forged = report.model_copy(update={"decisions": decisions})
    path = write_bundle(forged, histories, tmp_path / "forged.zip", KEYRING)
    # signed by a key holder: the offline checks cannot tell
    assert verify_bundle(path, KEYRING).ok
    check = await replay_bundle(path, KEYRING, policy=POLICY, workflows=WORKFLOWS)
    assert check.replayed
    assert named(check) == {(DECISIONS, number)}
    message = check.problems[0].message
    assert message.startswith("differs from replay: amounts {'tokens': 1.0} in the bundle, ")
    assert repr(honest.amounts) in message


async def test_replay_is_skipped_when_the_bundle_fails_its_checks(bundle: Path, tmp_path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        files[REPORT_HTML] += b"<!-- edited -->"

    tampered = rewrite(bundle, tmp_path / "t.zip", edit)
    check = await replay_bundle(tampered, KEYRING, policy=POLICY, workflows=WORKFLOWS)
    assert not check.replayed
    assert named(check) == {(REPORT_HTML, None)}


async def test_replay_with_changed_workflow_code_names_the_history_that_no_longer_replays(
    bundle: Path,
) -> None:
    from workflows import ChangedPlanner

    check = await replay_bundle(
        bundle, KEYRING, policy=POLICY, workflows=[ChangedPlanner, Executor]
    )
    root = next(n for n in members(bundle) if n.startswith("histories/"))
    assert check.replayed and not check.ok
    [problem] = [p for p in check.problems if p.file.startswith("histories/")]
    assert problem.file == root
    assert problem.message.startswith("does not replay: ")


def test_the_cli_writes_a_bundle_that_verify_bundle_accepts_and_a_tampered_one_fails(
    runaway,
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from temporal_governor.cli import main as cli

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.model_dump_json(by_alias=True, exclude_none=True))
    out = tmp_path / "incident.zip"
    args = ["replay", runaway["id"], "--policy", str(policy_file), "--workflows"]
    args += ["examples.agents", "--bundle", str(out), "--quiet"]
    args += [arg for f in runaway["files"] for arg in ("--history", str(f))]
    written = CliRunner().invoke(cli, args)
    assert written.exit_code == 0, written.output
    verified = CliRunner().invoke(cli, ["verify-bundle", str(out), "--json"])
    assert verified.exit_code == 0, verified.output
    check = json.loads(verified.output)
    assert check["ok"] and check["records"] > 0 and check["key_id"] in KEYRING.keys
    deeper = CliRunner().invoke(
        cli,
        ["verify-bundle", str(out), "--policy", str(policy_file), "--workflows", "examples.agents"],
    )
    assert deeper.exit_code == 0, deeper.output
    assert "gives its decisions" in deeper.output
    tampered = rewrite(
        out,
        tmp_path / "tampered.zip",
        lambda files: files.update(
            {
                REPORT_JSON: files[REPORT_JSON].replace(
                    b"max_tokens_per_task", b"max_tokens_per_tusk"
                )
            }
        ),
    )
    failed = CliRunner().invoke(cli, ["verify-bundle", str(tampered)])
    assert failed.exit_code == 1
    assert REPORT_JSON in failed.output
    unknown = CliRunner().invoke(cli, [*args, "--bundle-key", "nope"])
    assert unknown.exit_code == 2 and "nope" in unknown.output


# --- the bundle file itself: writing safely, reading boundedly, nothing unsigned ----------


def test_writing_does_not_follow_a_link_planted_where_the_partial_file_went(
    reviewed, tmp_path
) -> None:
    report, histories = reviewed
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / ".b.zip.partial"
    planted.symlink_to(victim)
    path = write_bundle(report, histories, tmp_path / "b.zip", KEYRING)
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and verify_bundle(path, KEYRING).ok
    assert planted.is_symlink() and set(tmp_path.iterdir()) == {victim, planted, path}


def test_a_failed_write_leaves_no_partial_file(reviewed, tmp_path, monkeypatch) -> None:
    import os

    report, histories = reviewed

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(EvidenceError, match=r"cannot write .*No space left on device"):
        write_bundle(report, histories, tmp_path / "b.zip", KEYRING)
    assert list(tmp_path.iterdir()) == []


HUGE = 64 << 20  # declared by a member that is a few KiB in the file


def huge_member(archive: zipfile.ZipFile, name: str) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w") as stream:
        for _ in range(HUGE >> 20):
            stream.write(bytes(1 << 20))


def bounded(check: Callable[[], BundleCheck], most: int = 16 << 20) -> BundleCheck:
    """``check()``, asserting that it allocated at most ``most`` bytes at any time."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = check()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < most, f"allocated {peak} bytes at peak"
    return result


def test_members_declaring_huge_sizes_are_named_unread(bundle: Path, tmp_path) -> None:
    files = members(bundle)
    size = len(files[REPORT_HTML])
    no_manifest = tmp_path / "no-manifest.zip"
    with zipfile.ZipFile(no_manifest, "w") as archive:
        huge_member(archive, "histories/zzz.json")
    check = bounded(lambda: verify_bundle(no_manifest, KEYRING))
    assert [str(p) for p in check.problems] == [f"{MANIFEST}: missing: not an evidence bundle"]
    extra, swapped = tmp_path / "extra.zip", tmp_path / "swapped.zip"
    with zipfile.ZipFile(extra, "w") as archive, zipfile.ZipFile(swapped, "w") as other:
        for name, data in files.items():
            archive.writestr(name, data)
            if name == REPORT_HTML:
                huge_member(other, name)
            else:
                other.writestr(name, data)
        huge_member(archive, "histories/zzz.json")
    check = bounded(lambda: verify_bundle(extra, KEYRING))
    assert [str(p) for p in check.problems] == [
        "histories/zzz.json: not listed in the manifest (not signed)"
    ]
    check = bounded(lambda: verify_bundle(swapped, KEYRING))
    assert [str(p) for p in check.problems] == [
        f"{REPORT_HTML}: changed: {HUGE} bytes, the manifest's {size} (refused unread)"
    ]


def test_huge_files_in_an_unzipped_bundle_are_named_unread(bundle: Path, tmp_path) -> None:
    folder = unzipped(bundle, tmp_path)
    size = (folder / REPORT_HTML).stat().st_size
    with (folder / "histories" / "zzz.json").open("wb") as sparse:
        sparse.truncate(HUGE)
    with (folder / REPORT_HTML).open("r+b") as sparse:
        sparse.truncate(HUGE)
    check = bounded(lambda: verify_bundle(folder, KEYRING))
    assert [str(p) for p in check.problems] == [
        "histories/zzz.json: not listed in the manifest (not signed)",
        f"{REPORT_HTML}: changed: {HUGE} bytes, the manifest's {size} (refused unread)",
    ]


def test_a_huge_manifest_is_refused_unread(bundle: Path, tmp_path) -> None:
    def grow(files: dict[str, bytes]) -> None:
        files[MANIFEST] += b" " * (2 << 20)

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", grow), KEYRING)
    size = len(members(bundle)[MANIFEST]) + (2 << 20)
    assert [str(p) for p in check.problems] == [
        f"{MANIFEST}: {size} bytes, more than the 1048576 a manifest may hold (unread)"
    ]


def prepend_forged_entries(data: bytes) -> bytes:
    """Local entries of a forged report (no directory of their own) in front of the zip."""
    import io

    forged = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as real, zipfile.ZipFile(forged, "w") as fake:
        for info in real.infolist():
            fake.writestr(
                info.filename,
                b'{"forged": true}' if info.filename == REPORT_JSON else real.read(info),
            )
    with zipfile.ZipFile(io.BytesIO(forged.getvalue())) as fake:
        return forged.getvalue()[: fake.start_dir] + data


def directory_with_data(data: bytes) -> bytes:
    import io

    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr("histories/evil.json/", b"FORGED CONTENT")
    return out.getvalue()


def commented(data: bytes) -> bytes:
    import io

    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.comment = b"anything at all"
    return out.getvalue()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            prepend_forged_entries,
            "t.zip: {} bytes before the first zip entry (prepended, not signed)",
        ),
        (
            lambda data: data + b"junk",
            "t.zip: 4 bytes after the end of the zip (appended, not signed)",
        ),
        (commented, "t.zip: a zip comment of 15 bytes (not signed)"),
        (
            directory_with_data,
            "histories/evil.json/: a directory entry carrying 14 bytes (not signed)",
        ),
    ],
    ids=["prepended", "appended", "comment", "directory-with-data"],
)
def test_unsigned_bytes_in_the_zip_file_are_named(
    bundle: Path, tmp_path, change: Callable[[bytes], bytes], expected: str
) -> None:
    data = bundle.read_bytes()
    changed = change(data)
    tampered = tmp_path / "t.zip"
    tampered.write_bytes(changed)
    check = verify_bundle(tampered, KEYRING)
    assert [str(p) for p in check.problems] == [expected.format(len(changed) - len(data))]


def duplicate_first(data: bytes, key: str, value: str) -> bytes:
    """The JSON object ``data`` with ``key`` given once more, first (first-wins parsers)."""
    return data.replace(b"{", b"{" + json.dumps({key: value})[1:-1].encode() + b",", 1)


def test_a_manifest_with_a_key_given_twice_is_refused(bundle: Path, tmp_path) -> None:
    def forge(files: dict[str, bytes]) -> None:
        files[MANIFEST] = duplicate_first(files[MANIFEST], "root_workflow_id", "someone-else")

    check = verify_bundle(rewrite(bundle, tmp_path / "t.zip", forge), KEYRING)
    assert named(check) == {(MANIFEST, None)}
    assert "duplicate key 'root_workflow_id'" in check.problems[0].message


def test_a_signed_report_or_record_with_a_key_given_twice_is_refused(bundle, tmp_path) -> None:
    def report(files: dict[str, bytes]) -> None:
        files[REPORT_JSON] = duplicate_first(files[REPORT_JSON], "root_workflow_id", "else")
        resign(files, REPORT_JSON)

    def record(files: dict[str, bytes]) -> None:
        files[DECISIONS] = duplicate_first(files[DECISIONS], "prev", "0" * 64)
        resign(files, DECISIONS)

    check = verify_bundle(rewrite(bundle, tmp_path / "r.zip", report), KEYRING)
    assert [str(p) for p in check.problems] == [f"{REPORT_JSON}: not an incident report"]
    check = verify_bundle(rewrite(bundle, tmp_path / "d.zip", record), KEYRING)
    assert str(check.problems[0]) == f"{DECISIONS}: line 1 is not a chain record"


async def test_verifying_without_any_key_is_bad_input(bundle: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from temporal_governor.cli import main as cli

    with pytest.raises(EvidenceError, match="no control keys are configured"):
        verify_bundle(bundle, Keyring({}))
    with pytest.raises(EvidenceError, match="TEMPORAL_GOVERNOR_KEYS"):
        await replay_bundle(bundle, Keyring({}), policy=POLICY, workflows=WORKFLOWS)
    monkeypatch.delenv("TEMPORAL_GOVERNOR_KEYS")
    result = CliRunner().invoke(cli, ["verify-bundle", str(bundle)])
    assert result.exit_code == 2, result.output
    assert "no control keys are configured" in result.output
