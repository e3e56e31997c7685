"""The bottom floor every layer shares: the wait loop, the records' time helpers, cleanup's owner rule,
and the signal policy (installed at the command boundary, honoured by shielded blocks in any thread)."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import threading

import pytest

from cislaves import TOOL
from cislaves.clouds.base import CleanupPolicy
from cislaves.errors import WaitTimeout
from cislaves.records import TAG_EXPIRES, TAG_OWNER, TAG_RUN, TAG_TOOL, expired, isoformat, parse_time, utcnow
from cislaves.waiting import Pending, wait_for


def test_wait_for_returns_the_result_and_names_the_last_state_seen_on_timeout():
    states = iter(["pending", "pending", "available"])
    assert wait_for(lambda: _done_when_available(states), "x", 5, first_delay=0.001) == "available"
    seen = iter(["queued", "saving", "saving"])

    def probe():
        return Pending(next(seen, "saving"))

    with pytest.raises(WaitTimeout) as err:
        wait_for(probe, "image ami-1", 0.2, first_delay=0.01)
    assert "waiting for image ami-1" in str(err.value)
    assert "(last seen: saving)" in str(err.value)
    assert err.value.last == "saving"


def _done_when_available(states):
    state = next(states)
    return state if state == "available" else Pending(state)


def test_wait_for_tells_progress_and_propagates_a_probes_error():
    told = []
    calls = iter([Pending("booting"), "up"])
    assert wait_for(lambda: next(calls), "boot", 5, first_delay=0.001,
                    progress=lambda what, seen, elapsed: told.append((what, seen))) == "up"
    assert told == [("boot", "booting")]

    def broken():
        raise RuntimeError("final")

    with pytest.raises(RuntimeError, match="final"):
        wait_for(broken, "anything", 5)


def test_parse_time_reads_iso_z_offsets_and_gce_label_form():
    when = dt.datetime(2026, 12, 2, 13, 15, 0, tzinfo=dt.timezone.utc)
    assert parse_time("2026-12-02T13:15:00Z") == when
    assert parse_time("2026-12-02T14:15:00+01:00") == when
    assert parse_time("20261202t131500z") == when
    assert parse_time("not a time") is None and parse_time(None) is None


def test_expired_reads_the_expires_tag():
    assert expired({TAG_EXPIRES: isoformat(utcnow() - dt.timedelta(minutes=1))})
    assert not expired({TAG_EXPIRES: isoformat(utcnow() + dt.timedelta(hours=1))})
    assert not expired({})


def _tags(owner=None, run="r1", expires_in_hours=24):
    tags = {TAG_TOOL: TOOL, TAG_RUN: run,
            TAG_EXPIRES: isoformat(utcnow() + dt.timedelta(hours=expires_in_hours))}
    if owner:
        tags[TAG_OWNER] = owner
    return tags


@pytest.mark.parametrize("tags, policy, reason", [
    (_tags("me"), CleanupPolicy("me"), "run ended"),
    (_tags("me"), CleanupPolicy("me", keep_run_ids={"r1"}), None),
    (_tags("other"), CleanupPolicy("me"), None),
    (_tags("other"), CleanupPolicy("me", all_owners=True), "all owners"),
    (_tags("other", expires_in_hours=-1), CleanupPolicy("me"), "expired"),
    (_tags("me", expires_in_hours=-1), CleanupPolicy("me", keep_run_ids={"r1"}), None),  # a kept instance
    (_tags(None), CleanupPolicy("me"), None),  # made before owners: only the wider sweep takes it
    (_tags(None), CleanupPolicy("me", all_owners=True), "all owners"),
    ({"Name": "someone-elses"}, CleanupPolicy("me", all_owners=True), None),  # never another tool's
])
def test_cleanup_policy_is_the_one_owner_rule(tags, policy, reason):
    assert policy.reason(tags) == reason


def test_shielded_works_in_a_worker_thread_without_signal_handlers():
    from cislaves import interrupts

    errors = []

    def work():
        try:
            with interrupts.shielded():
                with interrupts.shielded():
                    pass
        except Exception as exc:  # before the policy moved: ValueError: signal only works in main thread
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    assert errors == []


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_shielded_block_waits_until_it_ends(signame, tmp_path):
    """The command boundary installs the policy; a signal inside cleanup is held, then interrupts."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from cislaves import interrupts
        interrupts.install()
        try:
            with interrupts.shielded():
                os.kill(os.getpid(), signal.{signame})
                print("cleanup finished", flush=True)
            print("not reached", flush=True)
        except KeyboardInterrupt:
            print("interrupted after cleanup", flush=True)
        try:
            os.kill(os.getpid(), signal.{signame})
            print("not reached either", flush=True)
        except KeyboardInterrupt:
            print("interrupted at once", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["cleanup finished", "interrupted after cleanup", "interrupted at once"]


def test_a_relative_private_key_path_means_the_config_files_folder(tmp_path, monkeypatch):
    from cislaves import config as config_mod
    from cislaves.clouds.ssh import SSHSettings

    (tmp_path / "segredos").mkdir()
    cfg = tmp_path / "segredos" / "cislaves.yaml"
    cfg.write_text("clouds:\n  demo:\n    ssh_private_key_file: keys/demo\n")
    monkeypatch.chdir(tmp_path)
    loaded = config_mod.load(cfg, environ={})
    assert loaded.section("clouds.demo", SSHSettings).ssh_private_key_file == tmp_path / "segredos" / "keys" / "demo"
    from_env = config_mod.load(cfg, environ={"DEMO_KEY": "keys/mine"})
    settings = from_env.section("clouds.demo", SSHSettings, env={"ssh_private_key_file": "DEMO_KEY"})
    assert str(settings.ssh_private_key_file) == "keys/mine"  # a shell user's path: the current directory


def test_apply_ssh_expands_the_proxy_command_and_names_a_missing_address():
    from cislaves.clouds.ssh import SSHSettings, apply_ssh
    from cislaves.errors import CloudError
    from cislaves.records import Instance

    settings = SSHSettings(ssh_proxy_command="ssh -W %h:%p jump # 100%%", ssh_port=2222, ssh_user="ci")
    inst = apply_ssh(Instance("i-1", "demo", "n", "debian12", "r"), settings,
                     {"public": "203.0.113.5", "private": "10.0.0.5"}, default_interface="public",
                     default_user="root")
    assert (inst.address, inst.port, inst.user) == ("203.0.113.5", 2222, "ci")
    assert inst.proxy_command == "ssh -W 203.0.113.5:2222 jump # 100%"
    with pytest.raises(CloudError) as err:
        apply_ssh(Instance("i-2", "demo", "n", "debian12", "r"), SSHSettings(), {"public": None, "private": "10.0.0.6"},
                  default_interface="public", default_user="root")
    assert err.value.code == "NoAddress"
    assert "no public address" in str(err.value) and "it has: private (set ssh_interface)" in str(err.value)
