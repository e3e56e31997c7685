"""The listener against the fake Gerrit over real SSH: drops, dropped-output, bad lines, restarts."""
from __future__ import annotations

import threading

from cislaves.ci import dispatcher
from cislaves.clouds.base import wait_for
from tests.ci.helpers import job_rows


class Recorder:
    """A work function that records the jobs it ran (and can hold them until released)."""

    def __init__(self, hold: bool = False):
        self.ran: list[tuple[int, int, str]] = []
        self.running: set[int] = set()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.lock = threading.Lock()

    def __call__(self, job, stopping):
        with self.lock:
            self.running.add(job.id)
        try:
            while not self.release.wait(0.05):
                if stopping.is_set():
                    raise RuntimeError("stopped")
        finally:
            with self.lock:
                self.running.discard(job.id)
        with self.lock:
            self.ran.append((job.change, job.patchset, job.event_type))
        return "recorded"


def connected(gerrit, service, count=1):
    wait_for(lambda: gerrit.streaming() > 0 and service.stream.connections >= count,
             f"stream connection {count} to the fake Gerrit", 30)


def settle(config, service, expected_rows):
    """Wait until the queue holds `expected_rows` jobs and none is queued or running."""
    def done():
        jobs = job_rows(config)
        return len(jobs) >= expected_rows and all(j.state in ("succeeded", "cancelled", "failed") for j in jobs)
    wait_for(done, f"{expected_rows} finished jobs", 60,
             describe=lambda: f"{[(j.change, j.patchset, j.event_type, j.state) for j in job_rows(config)]}, "
                              f"{service.stats}")


def test_drops_during_stream_every_matching_event_is_one_job(gerrit, make_config, service_for):
    config = make_config()
    work = Recorder()
    service = service_for(config, work)
    connected(gerrit, service)
    expected = set()
    for round_ in range(4):
        base = 1000 + round_ * 10
        for change in range(base, base + 3):
            gerrit.upload(change)  # matches
            expected.add((change, 1, "patchset-created"))
            gerrit.comment(change, 1, "looks good", author="carol")  # does not match
        gerrit.comment(base, 1, "recheck", author=f"dev{round_}")
        expected.add((base, 1, "comment-added"))
        # drop mid-stream, and publish while the client cannot get back in
        gerrit.hold()
        gerrit.drop()
        gerrit.upload(base + 1, kind="TRIVIAL_REBASE")  # patch set 2, skipped by kind
        gerrit.upload(base + 2)  # patch set 2, missed on the stream: catch-up finds it
        expected.add((base + 2, 2, "patchset-created"))
        gerrit.comment(base + 2, 2, "recheck acme-ci", author=f"dev{round_}")
        expected.add((base + 2, 2, "comment-added"))
        gerrit.hold(False)
        connected(gerrit, service, round_ + 2)
    settle(config, service, len(expected))
    jobs = job_rows(config)
    seen = [(j.change, j.patchset, j.event_type) for j in jobs]
    assert sorted(seen) == sorted(expected), "every matching event exactly once"
    # a drop during a running catch-up makes the next catch-up cover both: fewer than 4 is correct
    assert 1 <= service.stats.catchups <= 5 and service.stats.bad_lines == 0
    ran = [j for j in jobs if j.state == "succeeded"]
    assert sorted((j.change, j.patchset, j.event_type) for j in ran) == sorted(work.ran)
    assert any("since:" in c for c in gerrit.commands)


def test_dropped_output_is_caught_up(gerrit, make_config, service_for):
    config = make_config()
    service = service_for(config, Recorder())
    connected(gerrit, service)
    gerrit.pause()  # the consumer stalls: Gerrit's 128-event buffer overflows
    for change in range(2000, 2150):
        gerrit.upload(change)
    gerrit.pause(False)
    settle(config, service, 150)
    assert sorted(j.change for j in job_rows(config)) == list(range(2000, 2150))
    assert service.stats.events == 129, "128 buffered events and one dropped-output"
    assert service.stats.catchups == 1 and service.stream.connections == 1


def test_failed_catch_up_reconnects_and_tries_again(gerrit, make_config, service_for):
    config = make_config()
    service = service_for(config, Recorder())
    connected(gerrit, service)
    gerrit.hold()
    gerrit.drop()
    gerrit.upload(2500)  # missed on the stream
    gerrit.fail_queries = 2
    gerrit.hold(False)
    settle(config, service, 1)
    assert [j.change for j in job_rows(config)] == [2500]
    assert gerrit.fail_queries == 0 and service.stream.connections >= 4


def test_malformed_lines_are_skipped_and_counted(gerrit, make_config, service_for):
    config = make_config(gerrit_extra={"max_line_bytes": 4096})
    service = service_for(config, Recorder())
    connected(gerrit, service)
    bad = [b"this is not json", b"{\"type\": \"patchset-created\", \"change\": {\"number\": \"x\"}}",
           b"[1, 2]", b"{}", b"{\"type\": 5}", b"\xff\xfe\xfd", b"{\"type\": \"comment-added\", \"author\": 3}",
           b"{\"unterminated\": ", b"x" * 100_000]
    gerrit.publish_raw(b"\n".join(bad) + b"\n")
    gerrit.publish_raw(b'{"type": "patchset-created", "patchSet": {"number": 1}}\n')  # missing fields: no job
    gerrit.upload(3000)
    settle(config, service, 1)
    assert [j.change for j in job_rows(config)] == [3000]
    # every bad line is counted except {"type": 5}: shaped like an event of a type no trigger wants,
    # the reader's byte filter passes over it without decoding it
    assert service.stats.bad_lines == len(bad) - 1
    assert service.stream.connections == 1 and service.error is None


def test_a_bad_ref_is_refused_and_metacharacters_stay_data(gerrit, make_config, service_for):
    config = make_config()
    service = service_for(config, Recorder())
    connected(gerrit, service)
    nasty = "$(touch /tmp/pwned-ci) `id`; rm -rf / | echo 'x' \"y\" && \\"
    event = gerrit.upload(3100, publish=False)
    event["patchSet"]["ref"] = "refs/heads/master; touch /tmp/pwned-ci"
    gerrit.publish(event)
    gerrit.upload(3101, branch=nasty)
    gerrit.comment(3101, 1, "recheck\n" + nasty)
    settle(config, service, 2)
    jobs = {j.event_type: j for j in job_rows(config)}
    assert set(jobs) == {"patchset-created", "comment-added"} and service.stats.refused == 1
    assert jobs["patchset-created"].branch == nasty and jobs["comment-added"].event["comment"].endswith(nasty)
    assert jobs["comment-added"].ref == "refs/changes/01/3101/1"


def test_restart_runs_queued_and_running_jobs(gerrit, make_config, service_for):
    config = make_config(ci={"workers": 1})
    first = Recorder(hold=True)
    service = service_for(config, first)
    connected(gerrit, service)
    for change in (4000, 4001, 4002):
        gerrit.upload(change)
    wait_for(lambda: len(first.running) == 1 and sum(j.state == "queued" for j in job_rows(config)) == 2,
             "one running and two queued jobs", 60, describe=lambda: [j.state for j in job_rows(config)])
    service.stop(grace=0)
    assert sorted(j.state for j in job_rows(config)) == ["queued"] * 3 and first.ran == []
    second = Recorder()
    again = service_for(config, second)
    settle(config, again, 3)
    assert sorted(c for c, _, _ in second.ran) == [4000, 4001, 4002]
    assert all(j.state == "succeeded" for j in job_rows(config))
    assert max(j.attempts for j in job_rows(config)) == 2


def test_changes_missed_while_stopped_are_caught_up_on_restart(gerrit, make_config, service_for):
    config = make_config()
    service = service_for(config, Recorder())
    connected(gerrit, service)
    gerrit.upload(4100)
    settle(config, service, 1)
    service.stop()
    gerrit.upload(4101)
    gerrit.comment(4100, 1, "recheck")
    again = service_for(config, Recorder())
    settle(config, again, 3)
    assert sorted((j.change, j.event_type) for j in job_rows(config)) == [
        (4100, "comment-added"), (4100, "patchset-created"), (4101, "patchset-created")]


def test_idle_worker_is_woken_by_a_new_job(gerrit, make_config, service_for, monkeypatch):
    """An idle worker starts a new job because the dispatcher wakes it, not because it looks at the queue
    again: its own look-again interval is an hour here, so only the wake-up can start the job within the
    deadline. (How quickly: bench/ci_latency.py prints event -> job start, target p99 <= 20 ms.)"""
    monkeypatch.setattr(dispatcher, "POLL", 3600.0)
    config = make_config()
    started = threading.Event()
    service = service_for(config, lambda job, stopping: started.set())
    connected(gerrit, service)
    gerrit.upload(4200)
    wait_for(started.is_set, "the job to start", 120)
