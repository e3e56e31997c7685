"""The SQLite job queue: one job per event, supersession, claiming, re-queueing, env of a job."""
from __future__ import annotations

import subprocess

import pytest

from cislaves.ci import events as ev
from cislaves.ci.queue import JobQueue


def event(change=1234, ps=1, kind="patchset-created", comment=None, when=1700000000, ref=None, **change_fields):
    data = {"type": kind, "eventCreatedOn": when,
            "change": {"number": change, "project": "openstack/nova", "branch": "master", "id": "Iabc",
                       **change_fields},
            "patchSet": {"number": ps, "revision": "f" * 40,
                         "ref": ref or f"refs/changes/{change % 100:02d}/{change}/{ps}"},
            "uploader": {"username": "alice"}, "author": {"username": "bob"}}
    if comment is not None:
        data["comment"] = comment
    return ev.from_dict(data)


@pytest.fixture
def db(tmp_path):
    queue = JobQueue(tmp_path / "ci" / "queue.sqlite")
    yield queue
    queue.close()


def test_same_event_twice_is_one_job(db):
    assert db.enqueue(event(), "check") is not None
    assert db.enqueue(event(), "check") is None
    recheck = event(kind="comment-added", comment="Patch Set 1:\n\nrecheck", when=1700000100)
    assert db.enqueue(recheck, "check") is not None
    assert db.enqueue(recheck, "check") is None
    later = event(kind="comment-added", comment="Patch Set 1:\n\nrecheck", when=1700000900)
    assert db.enqueue(later, "check") is not None, "a second recheck later is a new job"
    near = event(kind="comment-added", comment="Patch Set 1:\n\nrecheck", when=1700000903)
    assert db.enqueue(near, "check", tolerance=5) is None, "catch-up sees the same comment a little off"
    assert db.counts()["queued"] == 3


def test_newer_patch_set_supersedes_queued_older(db):
    first = db.enqueue(event(ps=1), "check")
    other_change = db.enqueue(event(change=99, ps=1), "check")
    running = db.enqueue(event(ps=2), "check")
    assert db.get(first).state == "cancelled" and "patch set 2" in db.get(first).result
    job = db.claim()
    assert job.id == other_change
    job = db.claim()
    assert job.id == running and job.state == "running"
    third = db.enqueue(event(ps=3), "check")
    assert db.get(running).state == "running", "running jobs are not cancelled"
    stale = db.enqueue(event(ps=2, kind="comment-added", comment="recheck"), "check")
    assert db.get(stale).state == "cancelled" and db.get(third).state == "queued"


def test_claim_finish_and_requeue(db):
    ids = [db.enqueue(event(change=c), "check") for c in (1, 2, 3)]
    a, b = db.claim(), db.claim()
    assert [a.id, b.id] == ids[:2] and a.attempts == 1
    assert db.finish(a, "succeeded", "ok")
    assert db.requeue_running() == 1
    assert not db.finish(b, "failed"), "a re-queued job's old run cannot finish it"
    again = db.claim()
    assert again.id == b.id and again.attempts == 2
    assert db.get(a.id).state == "succeeded" and db.get(a.id).result == "ok"
    assert db.claim().id == ids[2] and db.claim() is None


def test_last_event_time_never_moves_back(db):
    assert db.last_event_time() is None
    db.set_last_event_time(200)
    db.set_last_event_time(100)
    assert db.last_event_time() == 200


def test_bad_ref_refused(db):
    with pytest.raises(ev.BadEvent, match="refs/changes/NN"):
        db.enqueue(event(ref="refs/heads/master"), "check")
    with pytest.raises(ev.BadEvent):
        db.enqueue(event(ref="refs/changes/34/1234/1 && reboot"), "check")
    assert db.counts()["queued"] == 0


def test_metacharacters_are_data(db):
    nasty = "$(touch /tmp/pwned) `id`; rm -rf / | cat > x && echo '\"\\"
    job = db.get(db.enqueue(event(kind="comment-added", comment=nasty, branch=nasty, project=nasty), "check"))
    assert job.branch == nasty and job.project == nasty and job.event["comment"] == nasty
    env = job.env()
    assert env["GERRIT_BRANCH"] == nasty and env["GERRIT_REFSPEC"] == "refs/changes/34/1234/1"
    out = subprocess.run(["printenv", "GERRIT_BRANCH"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == nasty + "\n"


def test_manual_jobs_neither_cancel_nor_get_cancelled(db):
    """README: `fab enqueue` queues a new job every time; a newer patch set does not cancel it."""
    auto_1 = db.enqueue(event(ps=1), "check")
    manual_1 = db.enqueue(event(ps=1, kind="manual"), "manual", manual=True)
    manual_2 = db.enqueue(event(ps=2, kind="manual"), "manual", manual=True)
    assert db.get(auto_1).state == "queued", "a manual run of patch set 2 cancels nothing"
    assert db.get(manual_1).state == "queued"
    auto_3 = db.enqueue(event(ps=3), "check")
    assert db.get(auto_1).state == "cancelled" and db.get(auto_3).state == "queued"
    assert db.get(manual_1).state == db.get(manual_2).state == "queued", "uploads do not cancel manual runs"
    late = db.enqueue(event(ps=2, kind="comment-added", comment="recheck"), "check")
    assert db.get(late).state == "cancelled", "patch set 3 supersedes an automatic job of patch set 2"


def test_position_reset_moves_back(db):
    db.set_last_event_time(4_000_000_000)
    db.set_last_event_time(1_800_000_000, reset=True)
    assert db.last_event_time() == 1_800_000_000
