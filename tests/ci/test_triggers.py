"""Parsing and trigger selection, table-driven from real-format events."""
from __future__ import annotations

import json

import pytest

from cislaves.ci import events as ev
from cislaves.ci.settings import CISettings, Trigger
from cislaves.ci.triggers import Triggers, comment_body
from tests.ci.fake_gerrit import FakeGerrit


@pytest.fixture
def model(ci_key):
    """The fake's change model, not serving: builds real-format events."""
    fake = FakeGerrit(ci_key[1])
    yield fake
    fake._loop.close()


def build(model, kind, number=100, text="", author="bob", votes=None, **upload):
    """A real-format event: "upload" a patch set, or "comment" on the latest one."""
    if kind == "upload" or number not in model.changes:
        event = model.upload(number, publish=False, **{"kind" if k == "ps_kind" else k: v
                                                       for k, v in upload.items()})
        if kind == "upload":
            return event
    ps = len(model.changes[number]["patchSets"])
    return model.comment(number, ps, text, author=author, votes=votes, publish=False)


DEFAULT = {}
CASES = [
    # (name, trigger settings, event kind, event options, expected trigger or None)
    ("new patch set", DEFAULT, "upload", {}, "check"),
    ("trivial rebase skipped", DEFAULT, "upload", {"ps_kind": "TRIVIAL_REBASE"}, None),
    ("no code change skipped", DEFAULT, "upload", {"ps_kind": "NO_CODE_CHANGE"}, None),
    ("kinds to skip configurable", {"skip_kinds": []}, "upload", {"ps_kind": "TRIVIAL_REBASE"}, "check"),
    ("recheck", DEFAULT, "comment", {"text": "recheck"}, "check"),
    ("recheck with reason below", DEFAULT, "comment", {"text": "recheck\n\nflaky test"}, "check"),
    ("RECHECK in capitals", DEFAULT, "comment", {"text": "RECHECK"}, "check"),
    ("recheck our name", DEFAULT, "comment", {"text": "recheck acme-ci"}, "check"),
    ("recheck another CI", DEFAULT, "comment", {"text": "recheck other-ci"}, None),
    ("recheck inside a sentence", DEFAULT, "comment", {"text": "please do not recheck"}, None),
    ("plain review comment", DEFAULT, "comment", {"text": "looks good to me"}, None),
    ("our own recheck ignored", DEFAULT, "comment", {"text": "recheck", "author": "acme-ci"}, None),
    ("custom comment regex", {"comments": ["(?i)run acme"]}, "comment", {"text": "run ACME please"}, "check"),
    ("project exact match", {"projects": ["openstack/nova"]}, "upload", {}, "check"),
    ("project not listed", {"projects": ["openstack/cinder"]}, "upload", {}, None),
    ("project regex", {"projects": ["re:openstack/(nova|cinder)"]}, "upload", {"project": "openstack/cinder"},
     "check"),
    ("regex must match whole name", {"projects": ["re:openstack/nov"]}, "upload", {}, None),
    ("exact name is not a regex", {"projects": ["openstack/nov."]}, "upload", {"project": "openstack/novX"}, None),
    ("branch regex", {"branches": ["re:stable/.*"]}, "upload", {"branch": "stable/2024.1"}, "check"),
    ("branch not matched", {"branches": ["master"]}, "upload", {"branch": "stable/2024.1"}, None),
    ("event type not enabled", {"events": ["comment-added"]}, "upload", {}, None),
    ("work in progress skipped", DEFAULT, "upload", {"wip": True}, None),
    ("work in progress included", {"include_wip": True}, "upload", {"wip": True}, "check"),
    ("private skipped", DEFAULT, "upload", {"private": True}, None),
    ("private included", {"include_private": True}, "upload", {"private": True}, "check"),
    ("upstream Verified+1", {"approvals": [{"label": "Verified", "value": 1, "by": "zuul"}]}, "comment",
     {"author": "zuul", "votes": {"Verified": 1}, "text": "Build succeeded."}, "check"),
    ("Verified-1 does not trigger", {"approvals": [{"label": "Verified", "value": 1, "by": "zuul"}]}, "comment",
     {"author": "zuul", "votes": {"Verified": -1}, "text": "Build failed."}, None),
    ("Verified+1 by somebody else", {"approvals": [{"label": "Verified", "value": 1, "by": "zuul"}]}, "comment",
     {"author": "mallory", "votes": {"Verified": 1}, "text": "Build succeeded."}, None),
    ("approval by e-mail", {"approvals": [{"label": "Verified", "value": 1, "by": "zuul@example.org"}]},
     "comment", {"author": "zuul", "votes": {"Verified": 1}}, "check"),
]


@pytest.mark.parametrize("name,settings,kind,options,expected", CASES, ids=[c[0] for c in CASES])
def test_trigger_table(model, name, settings, kind, options, expected):
    triggers = Triggers([Trigger(**settings)], "acme-ci", own_user="acme-ci")
    line = json.dumps(build(model, kind, **dict(options)))
    assert triggers.select(ev.parse_line(line)) == expected
    if expected is not None:
        assert triggers.may_select(json.loads(line)), "the reader's quick filter must not drop it"


def test_quick_filter_drops_only_what_cannot_match(model):
    triggers = Triggers([Trigger(projects=["openstack/nova"])], "acme-ci")
    assert not triggers.may_select(build(model, "upload", number=1, project="openstack/swift"))
    assert not triggers.may_select({"type": "ref-updated", "refUpdate": {"project": "openstack/nova"}})
    for malformed in ({}, {"type": 5}, [1], {"type": "patchset-created", "change": {"project": 3}}):
        assert triggers.may_select(malformed), "malformed events are parsed, so they are counted"


def test_first_matching_trigger_wins_and_names_are_unique(model):
    settings = CISettings(triggers=[{"name": "stable", "branches": ["re:stable/.*"]}, {"name": "other"}])
    triggers = Triggers(settings.triggers, settings.name)
    assert triggers.select(ev.from_dict(build(model, "upload", branch="stable/x"))) == "stable"
    assert triggers.select(ev.from_dict(build(model, "upload", number=7))) == "other"
    with pytest.raises(ValueError, match="unique"):
        CISettings(triggers=[{"name": "a"}, {"name": "a"}])


def test_numbers_as_strings_and_missing_fields():
    event = ev.parse_line(json.dumps({
        "type": "patchset-created", "eventCreatedOn": "1700000000",
        "change": {"number": "1234", "project": "p", "branch": "b"},
        "patchSet": {"number": "5", "ref": "refs/changes/34/1234/5"}}))
    assert (event.change_number, event.patchset_number, event.created_on) == (1234, 5, 1700000000)
    assert event.account is None and event.patchset.kind is None
    assert Triggers([Trigger()], "ci").select(event) == "check"
    bare = ev.parse_line('{"type": "comment-added"}')
    assert bare.change is None and Triggers([Trigger()], "ci").select(bare) is None
    other = ev.parse_line('{"type": "reviewer-added", "eventCreatedOn": 5, "x": [1]}')
    assert other.type == "reviewer-added" and other.raw["x"] == [1]


@pytest.mark.parametrize("line,reason", [
    (b"not json at all", "not JSON"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (b'{"change": {}}', "'type'"),
    (b'{"type": "patchset-created", "change": {"number": "twelve"}}', "change.number"),
    (b'{"type": "patchset-created", "change": "nova"}', "'change'"),
    (b'{"type": "comment-added", "author": ["x"]}', "'author'"),
    (b'{"type": "comment-added", "approvals": [{"value": {}}]}', "approvals[0].value"),
    (b'{"type": "ref-updated", "refUpdate": {"refName": ["a"]}}', "refUpdate.refName"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"type": "x", "pad": "' + b"a" * 2000 + b'"}', "longer than the limit"),
])
def test_bad_lines_name_the_problem(line, reason):
    with pytest.raises(ev.BadEvent, match=reason.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        ev.parse_line(line, max_bytes=1024)


@pytest.mark.parametrize("ref,ok", [
    ("refs/changes/34/1234/5", True),
    ("refs/changes/04/1234/5", False),
    ("refs/changes/34/1234/6", False),
    ("refs/heads/master", False),
    ("refs/changes/34/1234/5; rm -rf /", False),
    ("refs/changes/34/1234/5\n", False),
    ("../../etc/passwd", False),
])
def test_change_ref_checked(ref, ok):
    if ok:
        assert ev.check_ref(ref, 1234, 5) == ref
    else:
        with pytest.raises(ev.BadEvent, match="refs/changes/NN"):
            ev.check_ref(ref, 1234, 5)


def test_comment_body_drops_gerrit_header():
    assert comment_body("Patch Set 3: Verified+1 Code-Review-1\n\nrecheck\nplease") == "recheck\nplease"
    assert comment_body("recheck") == "recheck"


@pytest.mark.parametrize("line,reason", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"type":"comment-added","change":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001, "nested too deeply"),
    (b'{"type":"patchset-created","change":{"number":"' + b"9" * 5000 + b'"}}', "change.number"),
    (b'{"type":"patchset-created","eventCreatedOn":' + b"9" * 5000 + b"}", "not JSON"),
])
def test_hostile_lines_are_bad_events(line, reason):
    with pytest.raises(ev.BadEvent, match=reason):
        ev.parse_line(line, max_bytes=1 << 21)


@pytest.mark.parametrize("value,seconds", [
    (1_700_000_000, 1_700_000_000), ("1700000000", 1_700_000_000), (1_700_000_000_123, 1_700_000_000),
    (-5, None), (10 ** 30, None), ("soon", None), (True, None), (None, None), (1.7e9, 1_700_000_000),
])
def test_times_are_seconds(value, seconds):
    assert ev.seconds(value) == seconds
    assert ev.from_dict({"type": "x", "eventCreatedOn": value}).created_on == seconds


def test_byte_filter_never_drops_a_line_that_could_match(model):
    triggers = Triggers([Trigger(projects=["openstack/nova"])], "acme-ci")
    upload = json.dumps(build(model, "upload", number=20)).encode()
    assert triggers.may_select_line(upload)
    escaped = upload.replace(b'"patchset-created"', b'"patchset\\u002dcreated"')
    assert triggers.may_select_line(escaped), "an escape could spell a wanted type: decode it"
    other = json.dumps(build(model, "upload", number=21, project="openstack/swift")).encode()
    assert not triggers.may_select_line(other)
    assert not triggers.may_select_line(b'{"type":"ref-updated","refUpdate":{"project":"openstack/nova"}}')
    assert triggers.may_select_line(b'{"type":"dropped-output"}')
    assert triggers.may_select_line(b"not json"), "lines that are not event objects are decoded (and reported)"
