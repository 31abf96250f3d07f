"""Every command's --help reads as plain sentences: no reStructuredText markup, no sentence broken mid-line."""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.testing import CliRunner

from eventpipe.cli import app, plain_help

RST = re.compile(r"``|:[a-z]+:`|`_\b|^\.\. ", re.MULTILINE)  # literals, roles, links, directives


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) of the group and everything under it (typer's click commands, vendored or not)."""
    out: list[tuple[tuple[str, ...], Any]] = [(path, group)]
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            out += _commands(command, (*path, name))
        else:
            out.append(((*path, name), command))
    return out


def test_plain_help_turns_a_docstring_into_sentences() -> None:
    doc = """`eventpipe x`: drain the ``topic`` records,
    see :class:`Settings`.

    Second paragraph
    continues here."""
    assert plain_help(doc) == "Drain the topic records, see Settings.\n\nSecond paragraph continues here."


def test_every_help_is_free_of_rst_and_mid_sentence_breaks() -> None:
    commands = _commands(typer.main.get_command(app))
    names = {" ".join(path) for path, _ in commands}
    assert {"", "drain", "archive restore", "ml train", "devstack env", "demo"} <= names  # the walk sees them all
    runner = CliRunner()
    for path, command in commands:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, (path, result.output)
        assert not RST.search(result.output), (path, RST.findall(result.output), result.output)
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph, (path, paragraph)  # one line per paragraph: the terminal wraps it
        for param in command.params:
            text = getattr(param, "help", None) or ""
            assert not RST.search(text) and "\n" not in text, (path, param.name, text)
