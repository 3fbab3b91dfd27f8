"""Every command in README.md and docs/*.md names flags, modules and presets that exist.

The fenced shell blocks (and inline `python stepN_...` / `python -m aetune...` spans) are read as a shell
would: continuation lines joined, comments dropped, ``&&`` chains split, ``NAME=value`` variables expanded.
Each ``python stepN_*.py ...`` (also under ``torchrun``) is parsed by that step's own ``parse_args`` (an
unknown flag or a bad value fails here), each ``python -m aetune.X`` must exist and parse its arguments the
same way, and each ``--config`` / ``--set`` must load (a preset of ``configs/``, keys that exist). Running the
long commands is left to the pipeline tests and CI (with tiny settings); this checks that none is stale.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
SHELL = ("bash", "sh", "shell", "console", "")
"""Fenced blocks read as shell (unlabelled ones too: only their command lines count, see ``COMMAND_LINE``)."""
COMMAND_LINE = re.compile(r"\s*(!?python3?|torchrun|[A-Za-z_]\w*=)\S*")
"""A logical line that runs python or torchrun, or sets a variable a later command uses."""
INLINE = re.compile(r"(?<!`)`((?:!?python|torchrun) [^`\n]+)`(?!`)")
SEPARATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = "..."
"""Written in a doc for "the flags above": dropped before parsing."""


@dataclass(frozen=True)
class Command:
    """One documented ``python`` invocation: where it is written and what it runs."""

    where: str  # README.md:123
    target: str  # a step script (step4_train.py) or a module (aetune.tools.memory_probe)
    args: tuple[str, ...]
    inline: bool  # a `span` in prose: may name a tool without its required arguments

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join([self.target, *self.args])}"


def shell_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """Logical lines of a shell block: backslash continuations joined, with the number of their first line."""
    out: list[tuple[int, str]] = []
    pending, start = "", first_line
    for i, line in enumerate(block.splitlines()):
        if not pending:
            start = first_line + i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def expand(token: str, variables: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced by the block's earlier ``NAME=value`` (others left as written)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), token)


def segments(line: str, variables: dict[str, str]) -> list[list[str]]:
    """The simple commands of one logical line (split at ``&&``, ``;``, ``|``); assignments are recorded."""
    out: list[list[str]] = [[]]
    for token in shlex.split(line, comments=True):
        if token in SEPARATORS:
            out.append([])
        elif re.fullmatch(r"\$\{?\w+\}?", token) and token.strip("${}") in variables:
            out[-1] += shlex.split(variables[token.strip("${}")])
        else:
            out[-1].append(expand(token, variables))
    commands = []
    for tokens in out:
        while tokens and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[0]):
            name, value = tokens.pop(0).split("=", 1)
            variables[name] = value
        if tokens:
            commands.append(tokens)
    return commands


def python_target(tokens: list[str]) -> tuple[str, list[str]] | None:
    """``(step script or aetune module, its arguments)`` of a command, or None for anything else."""
    tokens = [t for t in tokens if t != PLACEHOLDER]
    head = tokens[0].lstrip("!")
    if head == "torchrun":
        rest = [t for t in tokens[1:] if not t.startswith("--")]
        script = next((t for t in rest if t.endswith(".py")), None)
        return (script, tokens[tokens.index(script) + 1 :]) if script else None
    if head not in ("python", "python3") or len(tokens) < 2:
        return None
    if tokens[1] == "-m" and len(tokens) > 2 and tokens[2].split(".")[0] == "aetune":
        return tokens[2], tokens[3:]
    if re.fullmatch(r"step\d_\w+\.py", tokens[1]):
        return tokens[1], tokens[2:]
    return None


def documented_commands() -> list[Command]:
    """Every ``python`` command of the docs that runs a step script or an aetune module."""
    found: list[Command] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(REPO).as_posix()
        blocks = [(text[: m.start(2)].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m[1] in SHELL]
        fenced = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers for inline spans
        inline = [(fenced[: m.start()].count("\n") + 1, m.group(1)) for m in INLINE.finditer(fenced)]
        for first, block, is_inline in [*((n, b, False) for n, b in blocks), *((n, b, True) for n, b in inline)]:
            variables: dict[str, str] = {}
            for number, line in shell_lines(block, first):
                if not COMMAND_LINE.match(line):
                    continue
                try:
                    commands = segments(line, variables)
                except ValueError as e:  # an unbalanced quote: the shell would not run it either
                    raise ValueError(f"{name}:{number}: {e}: {line}") from e
                for tokens in commands:
                    target = python_target(tokens)
                    if target is not None:
                        found.append(Command(f"{name}:{number}", target[0], tuple(target[1]), is_inline))
    return found


COMMANDS = documented_commands()


def parse(command: Command) -> argparse.Namespace | None:
    """The command's ``parse_args`` result; argparse's message and exit become a test failure.

    An inline span that only names a tool (its required arguments left out) gives None.
    """
    if command.target.endswith(".py"):
        assert (REPO / command.target).is_file(), f"{command}: no such script"
        module = importlib.import_module(command.target.removesuffix(".py"))
    else:
        module = importlib.import_module(command.target)
    assert hasattr(module, "parse_args"), f"{command}: {command.target} has no parse_args"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return module.parse_args(list(command.args))
    except SystemExit as e:
        if command.inline and "the following arguments are required" in err.getvalue():
            return None
        pytest.fail(f"{command}\n  does not parse (exit {e.code}): {err.getvalue().strip()}")


def placeholder(value: object) -> bool:
    """``NAME``, ``PRESET``, ``DIR``: a value the reader fills in."""
    return isinstance(value, str) and value.isupper()


def test_the_docs_hold_commands() -> None:
    targets = {c.target for c in COMMANDS}
    assert {f"step{i}" for i in range(1, 6)} <= {t[:5] for t in targets}  # every step is documented somewhere
    assert "aetune.tools.memory_probe" in targets


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses(command: Command) -> None:
    from aetune.config import load_config
    from aetune.models import list_families
    from aetune.train.flags import build_config

    args = parse(command)
    if args is None:
        return
    config, overrides = getattr(args, "config", None), getattr(args, "overrides", None) or []
    if placeholder(config):
        return
    if config and not config.endswith((".yaml", ".yml")):
        assert (REPO / "configs" / f"{config}.yaml").is_file(), f"{command}: no preset configs/{config}.yaml"
    if command.target == "step4_train.py":
        build_config(args)  # the preset, --family, --set and the flags, as step 4 combines them
    elif config or overrides:
        load_config(config, overrides)  # unknown keys and bad values raise, naming them
    family = getattr(args, "family", None)
    if isinstance(family, str) and not placeholder(family):
        assert set(family.split(",")) <= set(list_families()), f"{command}: unknown family {family}"
