"""The checks' one round trip, without SSH: the script gather() sends, run by this host's real /bin/sh,
gives each command the result it gets when run alone; commands run side by side; judge() asks again
only for what a check could not know before, and gathers everything the known checks need at once.
(Over SSH on a real machine: tests/distros/test_local.py.)"""
import os
import subprocess

import pytest

from cislaves.distros import checks
from cislaves.distros.checks import Context, Output, gather_script, judge, parse_gathered

MARKER = "cislaves-0123456789abcdef"


def gather_here(commands, cwd=None):
    """gather()'s script and parser, with this host's sh instead of an SSH channel."""
    done = subprocess.run(["sh", "-c", gather_script(commands, MARKER)], capture_output=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    found = parse_gathered(done.stdout, MARKER, len(commands))
    assert sorted(found) == list(range(len(commands)))
    return {command: found[i] for i, command in enumerate(commands)}


def alone(command, cwd=None):
    done = subprocess.run([os.environ.get("SHELL") or "/bin/sh", "-c", command], capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=cwd,
                          timeout=60)
    return Output(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


COMMANDS = [
    "echo out; echo err >&2; exit 3",
    "printf 'no newline'",
    "true",
    "printf 'caf\\303\\251 \\342\\202\\254\\n\\n\\n'",  # multi-byte UTF-8: counted in bytes, not characters
    "printf '\\377\\376 not utf-8\\n' >&2; exit 1",
    f"echo '{MARKER} 0 0 999 999'; echo 'after a line that looks like a header'",
    "exec echo replaced the shell",
    "cat; echo read-stdin-rc=$?",  # stdin is /dev/null: no hang
    "cd /; umask 0077; pwd; umask",
    "pwd; umask",  # unaffected by the command before
    "exit 200",
    "seq 1 20000",  # more than a pipe's buffer
    # pipes, as on a channel of its own (`sudo -l` wraps its lines in a regular file, not in a pipe)
    "[ -p /dev/stdout ] && echo stdout is a pipe; [ -p /dev/stderr ] && echo stderr too >&2",
    "for c in nothing-such-1 nothing-such-2; do command -v $c >/dev/null && exec $c --version; done; "
    "echo fell-through",
]


def test_each_gathered_result_is_the_commands_own(tmp_path):
    gathered = gather_here(COMMANDS, cwd=tmp_path)
    for command in COMMANDS:
        assert gathered[command] == alone(command, cwd=tmp_path), command
    assert gathered["exit 200"].rc == 200
    assert gathered["printf 'no newline'"].stdout == "no newline"
    assert gathered[COMMANDS[3]].stdout == "café €\n\n\n"


def test_commands_run_side_by_side(tmp_path):
    """The first command waits (up to 10 s) for a file only the second one makes: in sequence it would
    give up; side by side it sees the file."""
    waits = (f'i=0; while [ ! -e {tmp_path}/made ]; do i=$((i+1)); [ "$i" -gt 1000 ] && exit 1; '
             f'sleep 0.01; done; echo saw it')
    gathered = gather_here([waits, f"touch {tmp_path}/made"])
    assert gathered[waits] == Output(0, "saw it\n", "")


def test_nothing_left_behind_on_the_host(tmp_path):
    """The script's own temporary folder is removed (its results are in the output)."""
    probe = tmp_path / "tmp"
    probe.mkdir()
    done = subprocess.run(["sh", "-c", gather_script(["echo x"], MARKER)], capture_output=True,
                          env={"TMPDIR": str(probe), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert parse_gathered(done.stdout, MARKER, 1) == {0: Output(0, "x\n", "")}
    assert list(probe.iterdir()) == []


def test_a_cut_short_answer_keeps_only_whole_results():
    data = (f"login banner\n{MARKER} 0 0 3 0\nok\n{MARKER} 1 1 10 0\nshort").encode()
    assert parse_gathered(data, MARKER, 2) == {0: Output(0, "ok\n", "")}
    assert parse_gathered(b"sudo: a password is required\n", MARKER, 2) == {}


def counting(gather_fn):
    rounds = []

    def gather(commands):
        rounds.append(list(commands))
        return gather_fn(commands)

    return gather, rounds


def ctx():
    return Context("debian12", "jenkins", "", False, "local", False)


def test_a_check_asks_again_only_for_what_it_could_not_know_before(tmp_path):
    (tmp_path / "name").write_text("second\n")

    def two_steps(c):
        first = c.run(f"cat {tmp_path}/name")
        second = c.run(f"echo looked up {first.stdout.strip()}")
        return second.rc == 0, "a two-step lookup", second.stdout.strip()

    def catches_everything(c):
        try:
            return True, "a result", c.run("echo one step").stdout.strip()
        except Exception:  # must not swallow the request for a missing command
            return False, "a result", "swallowed"

    gather, rounds = counting(gather_here)
    results = judge(ctx(), gather, [("two-steps", False, two_steps), ("one-step", False, catches_everything),
                                    ("full-only", True, two_steps)])
    assert [r.line() for r in results] == ["PASS two-steps: looked up second", "PASS one-step: one step",
                                           "SKIP full-only: not installed by the minimal package set"]
    assert rounds == [[f"cat {tmp_path}/name", "echo one step"], ["echo looked up second"]]


@pytest.mark.parametrize("full", [False, True])
def test_every_known_check_is_judged_after_one_round_trip(full):
    """What CHECKS ask for does not depend on earlier answers: one gather, whatever the answers are
    (here: every command 'fails', as on a machine that has nothing)."""
    gather, rounds = counting(lambda commands: {c: Output(1, "", "not here") for c in commands})
    context = ctx()
    context.full = full
    results = judge(context, gather)
    assert len(rounds) == 1 and len(set(rounds[0])) == len(rounds[0])
    assert [r.name for r in results] == [name for name, _, _ in checks.CHECKS]
    assert all(r.status in ("FAIL", "SKIP") for r in results)
    assert all("expected " in r.line() and "; found " in r.line() for r in results if r.status == "FAIL")
