"""Triggers users of Gerrit Trigger and Zuul expect: a change leaving WIP or private state whose upload
was skipped for that reason, change-restored, MERGE_FIRST_PARENT_UPDATE skipped, rechecks after
Gerrit's "(N comments)" preamble, votes read from the full approvals list; and the identity of an event
whichever way it arrived (the stream's full approvals list, catch-up's real votes)."""
from __future__ import annotations

import json

import pytest

from cislaves.ci import catchup
from cislaves.ci import events as ev
from cislaves.ci.queue import event_key
from cislaves.ci.settings import Trigger
from cislaves.ci.triggers import Triggers, comment_body
from cislaves.clouds.base import wait_for
from tests.ci.fake_gerrit import FakeGerrit
from tests.ci.helpers import job_rows


@pytest.fixture
def model(ci_key):
    """The fake's change model, not serving: builds real-format events."""
    fake = FakeGerrit(ci_key[1])
    yield fake
    fake._loop.close()


def select(event: dict, **settings) -> str | None:
    triggers = Triggers([Trigger(**settings)], "acme-ci", own_user="acme-ci")
    line = json.dumps(event).encode()
    chosen = triggers.select(ev.parse_line(line))
    if chosen is not None:
        assert triggers.may_select_line(line) and triggers.may_select(json.loads(line)), "quick filters pass it"
    return chosen


def test_ready_for_review_and_public_trigger_like_the_upload(model):
    model.upload(1, wip=True, publish=False)
    assert select(model.set_wip(1, False, publish=False)) == "check"
    assert select(model.set_wip(1, True, publish=False)) is None, "turned WIP: nothing to test"
    model.upload(2, private=True, publish=False)
    assert select(model.set_private(2, False, publish=False)) == "check"
    model.upload(3, wip=True, private=True, publish=False)
    assert select(model.set_wip(3, False, publish=False)) is None, "still private"
    model.upload(4, wip=True, kind="TRIVIAL_REBASE", publish=False)
    assert select(model.set_wip(4, False, publish=False)) is None, "the upload was skipped for its kind too"
    assert select(model.set_wip(1, False, publish=False), events=["patchset-created"]) is None


def test_restored_change_and_merge_first_parent_update(model):
    model.upload(5, publish=False)
    model.abandon(5, publish=False)
    assert select(model.restore(5, publish=False)) == "check"
    assert select(model.restore(5, publish=False), events=["patchset-created", "comment-added"]) is None
    assert select(model.upload(6, kind="MERGE_FIRST_PARENT_UPDATE", publish=False)) is None
    assert select(model.upload(6, kind="MERGE_FIRST_PARENT_UPDATE", publish=False), skip_kinds=[]) == "check"


@pytest.mark.parametrize("message,expected", [
    ("Patch Set 3:\n\n(1 comment)\n\nrecheck", "check"),
    ("Patch Set 3: Code-Review+1\n\n(2 comments)\n\nrecheck acme-ci", "check"),
    ("Patch Set 3:\n\n(1 inline comment)\n\nrecheck", "check"),
    ("Patch Set 3:\n\n(1 comment)\n\nplease do not recheck", None),
    ("Patch Set 3:\n\n(1 comment)", None),
])
def test_recheck_after_gerrits_preamble(model, message, expected):
    model.upload(7, publish=False)
    event = model.comment(7, 1, "", publish=False)
    event["comment"] = message
    assert select(event) == expected


def test_comment_body_strips_the_whole_preamble():
    assert comment_body("Patch Set 3:\n\n(1 comment)\n\nrecheck\n\nflaky") == "recheck\n\nflaky"
    assert comment_body("Patch Set 12: Verified-1\n\n(10 comments)\n\n") == ""


def test_vote_triggers_only_when_given_in_that_comment(model):
    """Gerrit 3.x lists every label in comment-added; an unchanged Verified+1 carries no oldValue."""
    wanted = {"approvals": [{"label": "Verified", "value": 1, "by": "zuul"}]}
    model.upload(8, publish=False)
    assert select(model.comment(8, 1, "Build succeeded.", author="zuul", votes={"Verified": 1},
                                publish=False), **wanted) == "check"
    later = model.comment(8, 1, "Just a note.", author="zuul", publish=False)
    assert {"type": "Verified", "description": "Verified", "value": "1"} in later["approvals"]
    assert select(later, **wanted) is None
    zero = [a for a in later["approvals"] if a["type"] == "Code-Review"]
    assert zero == [{"type": "Code-Review", "description": "Code-Review", "value": "0"}]


def test_identity_is_the_same_from_the_stream_and_from_catch_up(model):
    model.upload(9, publish=False, when=1_790_000_000)
    stream = [model.comment(9, 1, "recheck", author="bob", votes={"Code-Review": 1}, publish=False,
                            when=1_790_000_100),
              model.comment(9, 1, "recheck", author="carol", publish=False, when=1_790_000_200)]
    assert stream[0]["approvals"] != []
    rows = [json.loads(line) for line in model._query(list(catchup.QUERY_OPTIONS) + [
        catchup.query_for(1_790_000_000, 10, now=1_790_001_000)]).splitlines()]
    rebuilt = catchup.events_from_changes([r for r in rows if r.get("type") != "stats"], 1_790_000_000)
    comments = [e for e in rebuilt if e.type == "comment-added"]
    assert len(comments) == 2 and all(e.approvals == () or e.approvals[0].type == "Code-Review" for e in comments)
    assert [event_key(ev.from_dict(e), "check") for e in stream] == [event_key(e, "check") for e in comments]
    uploads = [e for e in rebuilt if e.type == "patchset-created"]
    assert [event_key(e, "check")[1] for e in uploads] == ["patchset-created:9:1:check"]


def test_catch_up_rebuilds_every_patch_set_restores_and_merges(model):
    base = 1_790_000_000
    model.upload(10, publish=False, when=base)
    model.upload(10, publish=False, when=base + 10)  # REWORK, then
    model.upload(10, kind="TRIVIAL_REBASE", publish=False, when=base + 20)  # a trivial rebase on top
    model.upload(11, publish=False, when=base)
    model.abandon(11, publish=False, when=base + 30)
    model.restore(11, publish=False, when=base + 40)
    model.upload(12, publish=False, when=base)
    model.merge(12, publish=False, when=base + 50)
    rows = [json.loads(line) for line in model._query(list(catchup.QUERY_OPTIONS) + [
        catchup.query_for(base + 5, 10, now=base + 100)]).splitlines()]
    found = catchup.events_from_changes([r for r in rows if r.get("type") != "stats"], base + 5)
    triggers = Triggers([Trigger(events=["patchset-created", "change-restored", "change-merged"])], "acme-ci")
    chosen = [(e.type, e.change_number, e.patchset_number) for e in found if triggers.select(e)]
    assert chosen == [("patchset-created", 10, 2), ("change-restored", 11, 1), ("change-merged", 12, 1)]


def test_new_triggers_through_the_stream(gerrit, make_config, service_for):
    config = make_config()
    service = service_for(config)
    wait_for(lambda: gerrit.stream_connections >= 1 and service.stream.connections >= 1, "the stream", 30)
    gerrit.upload(500, wip=True)  # skipped: work in progress
    gerrit.set_wip(500, False)  # ready: tested now
    gerrit.set_wip(500, True)
    gerrit.set_wip(500, False)  # ready again: patch set 1 was tested already
    gerrit.upload(501)
    gerrit.abandon(501)
    gerrit.restore(501)
    gerrit.upload(502, kind="MERGE_FIRST_PARENT_UPDATE")
    gerrit.upload(503)
    gerrit.comment(503, 1, "(1 comment)\n\nrecheck", author="erin")
    gerrit.upload(504)  # the last one: once its job is there, all earlier events were dispatched
    wait_for(lambda: any(j.change == 504 for j in job_rows(config)), "the last job", 30)
    assert sorted((j.change, j.event_type) for j in job_rows(config)) == [
        (500, "wip-state-changed"), (501, "change-restored"), (501, "patchset-created"),
        (503, "comment-added"), (503, "patchset-created"), (504, "patchset-created")]
    assert service.stats.duplicates == 1
