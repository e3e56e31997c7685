"""Fabric 1's `task:arg,key=value` command-line form, translated for Fabric 3 (invoke).

`fab it:cloud=ec2,distribution=centos7 destroy` becomes `fab it --cloud=ec2 --distribution=centos7
destroy`. Only tokens whose part before ':' is a known task are rewritten; `\\,` and `\\=` escape the
separators; positional values fill the task's parameters in order; booleans take true/false, yes/no,
1/0, on/off. An unknown key is a ParseError naming the task, the key and the valid ones.
"""
from __future__ import annotations

import inspect
from typing import Callable, Mapping

from invoke.exceptions import ParseError

TRUE = {"true", "yes", "y", "1", "on"}
FALSE = {"false", "no", "n", "0", "off", ""}

# task name -> list of (parameter name, is_boolean)
Signatures = Mapping[str, list[tuple[str, bool]]]


def signature_of(body: Callable) -> list[tuple[str, bool]]:
    """Parameters of a task body (the context parameter skipped), with whether each is boolean."""
    params = list(inspect.signature(body).parameters.values())[1:]
    return [(p.name, isinstance(p.default, bool)) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def split_escaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on `sep` not preceded by a backslash; backslash escapes are kept for unescape()."""
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",=\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def translate_token(token: str, task: str, params: list[tuple[str, bool]]) -> list[str]:
    """`task:a,k=v` -> [task, --first-param=a, --k=v]."""
    spec = token.split(":", 1)[1]
    names = [n for n, _ in params]
    booleans = {n for n, is_bool in params if is_bool}
    given: dict[str, str] = {}
    positional: list[str] = []
    if spec:
        for item in split_escaped(spec, ","):
            key_value = split_escaped(item, "=", maxsplit=1)
            if len(key_value) == 2:
                key = unescape(key_value[0]).strip().replace("-", "_")
                if key not in names:
                    raise ParseError(f"task {task!r} has no argument {key!r}; expected one of: "
                                     f"{', '.join(names) or '(none)'}")
                if key in given:
                    raise ParseError(f"task {task!r}: argument {key!r} given twice")
                given[key] = unescape(key_value[1])
            else:
                positional.append(unescape(item))
    free = [n for n in names if n not in given]
    if len(positional) > len(free):
        raise ParseError(f"task {task!r} takes at most {len(names)} argument(s) "
                         f"({', '.join(names) or 'none'}); got {len(positional) + len(given)}")
    for name, value in zip(free, positional):
        given[name] = value
    out = [task]
    for name in names:  # keep the task's own order: stable, readable command lines
        if name not in given:
            continue
        value = given[name]
        if name in booleans:
            lowered = value.strip().lower()
            if lowered in TRUE:
                out.append(flag(name))
            elif lowered not in FALSE:
                raise ParseError(f"task {task!r}: argument {name!r} expects true or false, got {value!r}")
        else:
            out.append(f"{flag(name)}={value}")
    return out


def translate(argv: list[str], signatures: Signatures) -> list[str]:
    """Rewrite every `task:...` token of argv whose task is known; leave everything else alone."""
    out: list[str] = []
    for index, token in enumerate(argv):
        if token == "--":  # the rest is a command for a task (e.g. `fab ssh -- uname -a`)
            return out + argv[index:]
        task, colon, _ = token.partition(":")
        if colon and not token.startswith("-") and task in signatures:
            out.extend(translate_token(token, task, signatures[task]))
        else:
            out.append(token)
    return out
