"""`edgecache --help` and each subcommand's: every argument and option says what it is; a bad flag is named."""

from __future__ import annotations

import argparse

import pytest

from edgecache.cli import _parser, main


def unexplained(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += unexplained(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{path}: {action.dest}")
    return missing


def test_every_subcommand_argument_and_option_has_a_help_line() -> None:
    assert unexplained(_parser(), "edgecache") == []


def test_check_config_help_says_what_it_prints_and_its_exit_status() -> None:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["check-config"].format_help().split())  # as wrapped to the terminal, unwrapped
    assert "`file: key: problem`" in text
    assert "exit 2" in text


def test_each_bad_one_origin_flag_is_named_in_a_problem_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """`file: key: problem` on the command line: the flag that is wrong, not a list of those that might be."""
    argv = ["serve", "--origin", "http://127.0.0.1:9", "--memory", "lots", "--slice", "1x", "--workers", "0"]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "command line: --memory: 'lots' is not a size such as 256MiB",
        "command line: --slice: '1x' is not a size such as 256MiB",
        "command line: --workers: expected 1 to 256",
    ]
