"""Every command shown in README.md and docs/*.md is run, or proven covered by a named test.

A fenced ```sh block is run command by command (bash, in the checkout, .venv/bin first on PATH, a
data dir of its own, no cloud credentials), each expected to exit 0. A comment on the line before the
fence changes that (the forms below are the whole vocabulary):

    <!-- docs-test: exit=0,1 -->                  run; these exit codes are fine (grep finding nothing)
    <!-- docs-test: collect -->                   pytest lines get --collect-only, bench scripts --help
    <!-- docs-test: covered-by tests/a.py::test_b .ci/run -->
                                                  needs a real cloud or a long bake: the named tests
                                                  (or files) must exist, and every fab/cislaves
                                                  command in the block must parse: its tasks exist
                                                  and take the keys and options it gives them

Every `fab ...` / `cislaves ...` written inline in the text is parsed the same way, so a renamed
task or argument cannot stay in the docs. Cheap on purpose: one `-h` per task, the runs are help,
listings and read-only checks.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(sh|bash|shell|console)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
INLINE = re.compile(r"(?<!`)`((?:fab|cislaves) [^`]+)`(?!`)")
PROGRAMS = ("fab", "cislaves")
# tasks that boot, bake or touch a cloud: a block showing them says which test covers it
SLOW = {"it", "up", "bootstrap", "tests", "create_image", "destroy", "down", "ssh", "cleanup", "rebake",
        "prune", "image_diff", "delete_image", "listen", "enqueue", "cancel", "logs", "images"}


def blocks():
    """(doc, line number, directive, [commands]) for every shell block."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            if FENCE.match(lines[i]):
                before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                match = DIRECTIVE.match(before.strip())
                start, body = i + 1, []
                i += 1
                while i < len(lines) and not lines[i].startswith("```"):
                    body.append(lines[i])
                    i += 1
                found.append((doc, start, match.group(1) if match else "run", commands(body)))
            i += 1
    return found


def commands(body: list[str]) -> list[str]:
    """The commands of a block: continuations joined, comments and blank lines dropped."""
    out, pending = [], ""
    for line in body:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        command = strip_comment(line).strip()
        if command:
            out.append(command)
    return out


def strip_comment(line: str) -> str:
    """The line up to an unquoted `#` that starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


BLOCKS = blocks()


def test_the_docs_have_shell_blocks_and_every_directive_is_known():
    assert len(BLOCKS) >= 8, [str(d) for d in DOCS]
    for doc, line, directive, _ in BLOCKS:
        kind = directive.split()[0] if directive else ""
        assert kind in ("run", "collect", "covered-by") or kind.startswith("exit="), f"{doc.name}:{line}: {directive}"


def env_for(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "AWS_", "GCE_", "GOOGLE_", "RACKSPACE_", "CISLAVES_"))}
    env.update(PATH=f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
               CISLAVES_DATA_DIR=str(tmp_path / "data"), CISLAVES_CONFIG=str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    return env


def run_ids():
    return [f"{doc.name}:{line}" for doc, line, directive, _ in BLOCKS if not directive.startswith("covered-by")]


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b[2].startswith("covered-by")], ids=run_ids())
def test_each_runnable_command_runs(block, tmp_path):
    doc, line, directive, cmds = block
    ok = {0}
    if directive.startswith("exit="):
        ok = {int(code) for code in directive[len("exit="):].split(",")}
    exports = []
    for command in cmds:
        if command.startswith("export "):
            exports.append(command)
            continue
        if directive == "collect" or re.search(r"\bpytest\b", command):  # never the suite inside the suite
            command = collect_form(command)
        assert "./setup.sh" not in command, f"{doc.name}:{line}: mark setup.sh with covered-by .ci/run"
        for segment in segments(command):
            slow = [w.partition(":")[0] for w in segment[1:] if w.partition(":")[0] in SLOW]
            assert not slow, f"{doc.name}:{line}: `{command}` runs {slow[0]}: mark the block covered-by its test"
        script = "set -o pipefail\n" + "\n".join(exports + [command])
        done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env_for(tmp_path), capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode in ok, (f"{doc.name}:{line}: `{command}` exited {done.returncode}\n"
                                       f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        assert "Traceback" not in done.stderr, f"{doc.name}:{line}: `{command}`\n{done.stderr[-3000:]}"
        for segment in segments(command):
            check_parses(segment, f"{doc.name}:{line}")


def collect_form(command: str) -> str:
    if re.search(r"\bpytest\b", command):
        return command + " --collect-only -q"
    if re.search(r"\bbench/\S+\.py\b", command):
        return command + " --help"
    raise AssertionError(f"docs-test: collect: `{command}` is neither pytest nor a bench script")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b[2].startswith("covered-by")],
                         ids=[f"{d.name}:{n}" for d, n, k, _ in BLOCKS if k.startswith("covered-by")])
def test_each_covered_command_names_existing_tests_and_parses(block):
    doc, line, directive, cmds = block
    where = f"{doc.name}:{line}"
    names = directive.split()[1:]
    assert names, f"{where}: covered-by names no test"
    for name in names:
        path, _, test = name.partition("::")
        assert (REPO / path).is_file(), f"{where}: {path} does not exist"
        if test:
            assert re.search(rf"^(async )?def {re.escape(test)}\(", (REPO / path).read_text(), re.M), \
                f"{where}: no test {test} in {path}"
    for command in cmds:
        if "./setup.sh" in command:  # what CI runs from nothing; .ci/run must be among the names
            assert ".ci/run" in names and "./setup.sh" in (REPO / ".ci/run").read_text(), where
        for segment in segments(command):
            check_parses(segment, where)


def test_every_inline_command_parses():
    seen = 0
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for match in INLINE.finditer(line):
                if "<" in match.group(1):
                    continue  # a pattern with placeholders (a tag, a comment), not a command
                for segment in segments(match.group(1)):
                    check_parses(segment, f"{doc.name}:{number}")
                    seen += 1
    assert seen >= 20


# -- parsing fab / cislaves command lines ----------------------------------------------------------
def segments(command: str) -> list[list[str]]:
    """The fab/cislaves invocations of a shell line, as argv without assignments and program path."""
    try:
        words = shlex.split(command.replace("&&", " ;; ").replace("|", " ;; ").replace(";", " ;; "))
    except ValueError:
        return []
    out, current = [], []
    for word in words + [";;"]:
        if word == ";;":
            if current:
                out.append(current)
            current = []
        else:
            current.append(word)
    found = []
    for argv in out:
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv and Path(argv[0]).name in PROGRAMS:
            found.append([Path(argv[0]).name, *argv[1:]])
    return found


def check_parses(argv: list[str], where: str) -> None:
    """Every task named exists and takes the keys / options given to it."""
    program, args = argv[0], argv[1:]
    if "--" in args:
        args = args[:args.index("--")]
    task = None
    i = 0
    while i < len(args):
        word = args[i]
        if word in ("-h", "--help") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            assert args[i + 1] in tasks(program), f"{where}: {program} has no task {args[i + 1]!r}"
            i += 2
            continue
        if word.startswith("-") and task is None:  # a core option; -c/--cloud of cislaves takes a value
            if word.split("=", 1)[0] in core_valued(program) and "=" not in word:
                i += 1
            i += 1
            continue
        if word.startswith("-"):
            if task is not None:
                option = word.split("=", 1)[0]
                assert option in options(program, task), \
                    f"{where}: `{' '.join(argv)}`: {task} takes no {option} ({sorted(options(program, task))})"
                if "=" not in word and not option_is_flag(program, task, option) and i + 1 < len(args):
                    i += 1  # its value
            i += 1
            continue
        name, _, spec = word.partition(":")
        if name.startswith(("<", "...")) or name.endswith(">") or name in ("TASK", "/"):  # a placeholder
            i += 1
            continue
        assert name in tasks(program), f"{where}: `{' '.join(argv)}`: {program} has no task {name!r}"
        task = name
        for part in re.split(r"(?<!\\),", spec) if spec else []:
            key, eq, _ = part.partition("=")
            if eq:
                option = "--" + key.replace("_", "-")
                assert option in options(program, task), \
                    f"{where}: `{' '.join(argv)}`: {task} takes no {key!r} ({sorted(options(program, task))})"
        i += 1


@functools.lru_cache(maxsize=None)
def tasks(program: str) -> frozenset[str]:
    done = subprocess.run([str(REPO / ".venv" / "bin" / program), "-l"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return frozenset(m.group(1) for m in re.finditer(r"^\s+([a-z][a-z0-9_-]*)", done.stdout, re.M))


@functools.lru_cache(maxsize=None)
def core_valued(program: str) -> frozenset[str]:
    """The program's own options that take a value (`-c STRING, --cloud=STRING`)."""
    done = subprocess.run([str(REPO / ".venv" / "bin" / program), "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    head = done.stdout.split("Tasks:")[0] if program == "cislaves" else done.stdout.split("Subcommands")[0]
    found = set()
    for line in head.splitlines():
        if re.match(r"^\s+-", line) and re.search(r"[ =][A-Z]+\b", line.split("  ")[1] if "  " in line else line):
            found |= set(re.findall(r"(--?[a-zA-Z][\w-]*)[ =][A-Z]", line))
    return frozenset(found)


@functools.lru_cache(maxsize=None)
def task_help(program: str, task: str) -> str:
    done = subprocess.run([str(REPO / ".venv" / "bin" / program), "-h", task], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def options(program: str, task: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", task_help(program, task))) | {"--help", "-h"} | \
        set(re.findall(r"(?<![\w-])(-[a-zA-Z])\b", task_help(program, task)))


def option_is_flag(program: str, task: str, option: str) -> bool:
    return not re.search(rf"{re.escape(option)}[= ][A-Z]", task_help(program, task))


def test_every_relative_link_reaches_a_file_and_heading():
    """The README's links into docs/ (and any between pages) survive moves and renames."""
    def anchors(path: Path) -> set[str]:
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}

    links = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            assert where.is_file(), f"{doc.name}: link {target} reaches nothing"
            assert not anchor or anchor in anchors(where), f"{doc.name}: link {target}: no such heading"
            links += 1
    assert links >= 10
