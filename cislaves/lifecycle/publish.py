"""Publishing new image ids into segredos' YAML (the seed's ci-platform/all/all.yaml) and git.

The file is the user's, hand-written, with comments, anchors, odd quoting and blank lines; a change
must touch only the id lines. So an id that already has a line is changed in place, in the text
itself: ruamel.yaml's round-trip parser finds the key's line, the old scalar (after any anchor) is
replaced in the quoting style it had, and everything else stays byte for byte. A key that does not
exist yet is added through ruamel.yaml's round-trip dump (which keeps comments, order and quoting).
Either way the result is parsed again and must equal the old document plus exactly the new ids
before it is written, atomically (temp file, fsync, rename, same mode).
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import io
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cislaves.errors import CislavesError, ConfigError

log = logging.getLogger(__name__)
PLAIN_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


class PublishError(CislavesError):
    """The ids could not be written into the YAML file or committed."""


def key_path(template: str, **fields: str) -> list[str]:
    """The key path for one image: the template split on dots first, then each part formatted (so a
    distribution such as ubuntu14.04 stays one key)."""
    try:
        return [part.format(**fields) for part in template.split(".")]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"rebake.publish.path: {template!r}: unknown field {exc}; expected "
                          f"{{cloud_key}}, {{cloud}}, {{region}}, {{distribution}}, {{target}}") from None


def render(text: str, changes: list[tuple[list[str], str]], where: str) -> str:
    """`text` with each (key path, value) set; only the affected lines change."""
    yaml = _yaml()
    before = _load(yaml, text, where)
    shared = {}  # an anchored id changes with its aliases (the YAML's own meaning)
    for path, value in changes:
        parent = _walk(before, path, where, False, dict) if before is not None else None
        old = parent.get(path[-1]) if parent is not None else None
        if old is not None and getattr(getattr(old, "anchor", None), "value", None):
            shared[id(old)] = value
    expected = copy.deepcopy(_plain(before, shared))
    for path, value in changes:
        _set_plain(expected, path, value, where)
    new_text, pending = text, []
    for path, value in changes:
        spliced = _splice(new_text, path, value, where) or _insert(new_text, path, value, where)
        if spliced is None:
            pending.append((path, value))
        else:
            new_text = spliced
    if pending:
        doc = _load(yaml, new_text, where)
        for path, value in pending:
            _set_rt(doc, path, value, where)
        out = io.StringIO()
        yaml.dump(doc, out)
        new_text = out.getvalue()
    if _plain(_load(_yaml(), new_text, where)) != expected:
        raise PublishError(f"{where}: writing the new ids would change more than them; nothing written")
    return new_text


def diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}"))


def write_atomic(path: Path, text: str) -> None:
    """Replace the file's content atomically, keeping its mode."""
    path = Path(path)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PublishError(f"{path}: cannot write ({exc.strerror})") from None


# -- git ------------------------------------------------------------------------------------------
def git_root(path: Path) -> Path:
    found = _git(path.parent, "rev-parse", "--show-toplevel", what=f"{path} is not in a git repository")
    return Path(found.strip())


def check_git(path: Path, branch: str) -> Path:
    """Before any bake: the file is in a repository, the branch name is valid, the file has no
    uncommitted changes (they would end up in the commit). Returns the repository's root."""
    root = git_root(path)
    _git(root, "check-ref-format", "--branch", branch, what=f"rebake.publish.git.branch: {branch!r} is not a "
                                                             f"valid branch name")
    status = _git(root, "status", "--porcelain", "--", str(path), what="git status failed")
    if status.strip():
        raise PublishError(f"{path}: has uncommitted changes; commit or discard them before a rebake "
                           f"publishes into it")
    return root


def commit(path: Path, text: str, branch: str, message: str, push: bool, remote: str) -> str:
    """Create `branch` from the current commit, write the file, commit only it; push if asked.
    Returns the new commit's id."""
    root = git_root(path)
    name = branch
    existing = _git(root, "branch", "--list", name, what="git branch failed")
    if existing.strip():
        name = f"{branch}-{_git(root, 'rev-parse', '--short', 'HEAD', what='git rev-parse failed').strip()}"
    _git(root, "checkout", "-q", "-b", name, what=f"cannot create branch {name}")
    write_atomic(path, text)
    rel = str(path.resolve().relative_to(root.resolve()))
    _git(root, "add", "--", rel, what=f"git add {rel} failed")
    identity = []
    if not _git(root, "config", "user.email", what="", check=False).strip():
        identity = ["-c", "user.name=cislaves", "-c", "user.email=cislaves@localhost"]
    _git(root, *identity, "commit", "-q", "-m", message, "--", rel, what="git commit failed")
    head = _git(root, "rev-parse", "HEAD", what="git rev-parse failed").strip()
    if push:
        _git(root, "push", "-q", remote, name, what=f"git push {remote} {name} failed")
    return head


def _git(cwd: Path, *args: str, what: str, check: bool = True) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PublishError(f"{what}: {exc}") from None
    if check and done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [""])[-1]
        raise PublishError(f"{what}{': ' + detail if detail else ''}")
    return done.stdout


# -- YAML helpers ----------------------------------------------------------------------------------
def _yaml() -> YAML:
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def _load(yaml: YAML, text: str, where: str):
    try:
        return yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None


def _plain(node: Any, replace: dict[int, str] | None = None) -> Any:
    """Plain Python data of a round-trip document (for comparing meaning, not form); `replace` maps
    the identity of anchored scalars to new values (every alias of them follows)."""
    replace = replace or {}
    if id(node) in replace:
        return replace[id(node)]
    if isinstance(node, dict):
        return {str(k): _plain(v, replace) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v, replace) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _walk(node: Any, path: list[str], where: str, create: bool, factory):
    for depth, key in enumerate(path[:-1]):
        here = ".".join(path[:depth + 1])
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise PublishError(f"{where}: {'.'.join(path[:depth]) or '(top level)'} is not a mapping")
        if key not in node:
            if not create:
                return None
            node[key] = factory()
        node = node[key]
        if not isinstance(node, (dict, list)):
            raise PublishError(f"{where}: {here} is {_kind(node)}, expected a mapping")
    if not isinstance(node, dict):
        raise PublishError(f"{where}: {'.'.join(path[:-1])} is not a mapping")
    old = node.get(path[-1])
    if isinstance(old, (dict, list)):
        raise PublishError(f"{where}: {'.'.join(path)} holds {_kind(old)}, expected an image id")
    return node


def _kind(node: Any) -> str:
    return {str: "a string", dict: "a mapping", list: "a list"}.get(
        next((t for t in (str, dict, list) if isinstance(node, t)), None), f"a {type(node).__name__}")


def _set_plain(data, path, value, where):
    _walk(data, path, where, True, dict)[path[-1]] = value


def _set_rt(doc, path, value, where):
    from ruamel.yaml.comments import CommentedMap

    if doc is None:
        raise PublishError(f"{where}: the file is empty")
    _walk(doc, path, where, True, CommentedMap)[path[-1]] = value


_QUOTED = {"'": re.compile(r"'(?:[^']|'')*'"), '"': re.compile(r'"(?:[^"\\]|\\.)*"')}


def _splice(text: str, path: list[str], value: str, where: str) -> str | None:
    """Replace the scalar of an existing `key: value` line in the text; None when it cannot (no such
    key yet, a multi-line or flow value): the caller falls back to a round-trip dump."""
    doc = _load(_yaml(), text, where)
    if doc is None:
        return None
    parent = _walk(doc, path, where, False, dict)
    key = path[-1]
    if parent is None or key not in parent or not hasattr(parent, "lc"):
        return None
    try:
        line_no, col = parent.lc.key(key)
    except (KeyError, TypeError):
        return None
    lines = text.splitlines(True)
    line = lines[line_no]
    pos = _quoted_end(line, col) or (col + len(key) if line.startswith(key, col) else None)
    m = re.compile(r"[ \t]*:[ \t]+(&[^\s]+[ \t]+)?").match(line, pos) if pos else None
    if not m:
        return None
    start = m.end()
    tail = line[start:]
    end = _quoted_end(line, start)
    if end:
        new = _quote(value, tail[:1])
    elif tail[:1] in _QUOTED:
        return None  # an unterminated quote: a multi-line scalar
    else:
        flow = getattr(parent, "fa", None) is not None and parent.fa.flow_style()
        plain = (r"[^\s#,\[\]{}][^#,\[\]{}\n\r]*?(?=[ \t]*[,}\]]|[ \t]+#|[ \t]*\r?\n|[ \t]*$)" if flow
                 else r"[^\s#][^#\n\r]*?(?=[ \t]+#|[ \t]*\r?\n|[ \t]*$)")
        p = re.match(plain, tail)
        if not p or p.group(0)[:1] in "[{|>":  # a flow collection or a block scalar: not an id line
            return None
        end = start + p.end()
        new = value if PLAIN_SAFE.match(value) else _quote(value, "'")
    lines[line_no] = line[:start] + new + line[end:]
    return "".join(lines)


def _quoted_end(line: str, pos: int) -> int | None:
    """Where the quoted scalar starting at `pos` ends (None: not quoted, or not closed on this line)."""
    m = _QUOTED[line[pos]].match(line, pos) if line[pos:pos + 1] in _QUOTED else None
    return m.end() if m else None


def _insert(text: str, path: list[str], value: str, where: str) -> str | None:
    """Add the missing keys of `path` as new lines at the end of the deepest mapping that exists
    (block style only; None otherwise)."""
    doc = _load(_yaml(), text, where)
    if not isinstance(doc, dict) or not hasattr(doc, "lc"):
        return None
    node, depth = doc, 0
    while depth < len(path) - 1 and isinstance(node.get(path[depth]), dict) and len(node[path[depth]]):
        node, depth = node[path[depth]], depth + 1
    if path[depth] in node and depth == len(path) - 1:
        return None  # exists: _splice's job
    if path[depth] in node or getattr(node, "fa", None) is not None and node.fa.flow_style():
        return None
    keys = list(node)
    if not keys:
        return None
    lines = text.splitlines(True)
    col = node.lc.key(keys[0])[1]
    if any(node.lc.key(k)[1] != col for k in keys):
        return None
    step = 2
    if depth > 0:
        parent_col = _parent_col(doc, path[:depth])
        step = max(2, col - parent_col) if parent_col is not None else 2
    end = node.lc.key(keys[-1])[0] + 1
    while end < len(lines):
        stripped = lines[end].strip()
        indent = len(lines[end]) - len(lines[end].lstrip(" "))
        if stripped and not stripped.startswith("#") and indent <= col:
            break
        end += 1
    while end > 0 and not lines[end - 1].strip():
        end -= 1  # blank lines after the block stay after the new keys
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    added = []
    for i, key in enumerate(path[depth:]):
        pad = " " * (col + i * step)
        name = key if PLAIN_SAFE.match(key) else _quote(key, "'")
        last = depth + i == len(path) - 1
        shown = value if PLAIN_SAFE.match(value) else _quote(value, "'")
        added.append(f"{pad}{name}: {shown}\n" if last else f"{pad}{name}:\n")
    lines[end:end] = added
    return "".join(lines)


def _parent_col(doc, path: list[str]) -> int | None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    try:
        return node.lc.key(path[-1])[1]
    except (AttributeError, KeyError, TypeError):
        return None


def _quote(value: str, style: str) -> str:
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def message(results: Iterable[tuple[str, str, str]]) -> str:
    """The commit message: a summary line, then `target region image` lines."""
    rows = list(results)
    body = "\n".join(f"- {target} {region}: {image}" for target, region, image in rows)
    return f"images: {len(rows)} new id{'s' if len(rows) != 1 else ''} from cislaves rebake\n\n{body}\n"
