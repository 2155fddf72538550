"""The documentation keeps up with the code: every task, flag and setting is documented
(issue 25), and the README stays short enough to read."""
from __future__ import annotations

import inspect
import re

import pytest

from backup import config
from backup.tasks import DEBUG_VARIABLE, ns

from conftest import REPO

TASKS = sorted(ns.task_names)
DOCS = REPO / "docs"
PAGES = ("commands", "configuration", "troubleshooting", "cost", "benchmarks", "architecture")


def text(name: str) -> str:
    return (DOCS / f"{name}.md").read_text("utf-8")


def test_the_readme_is_short_and_links_every_page():
    readme = (REPO / "README.md").read_text("utf-8")
    assert len(readme.splitlines()) <= 300
    for page in PAGES:
        assert f"](docs/{page}.md)" in readme, page


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_a_section_and_every_flag_is_documented(name):
    commands = text("commands")
    headings = [line for line in commands.splitlines() if line.startswith("#")]
    assert any(f"`inv backup.{name}" in line for line in headings), f"no section for backup.{name}"
    every_page = "".join(text(page) for page in PAGES)
    task = ns[name]
    for param in inspect.signature(task.body).parameters:
        if param == "c" or param in task.positional:
            continue  # the context, and a positional argument (query's SQL)
        flag = "--" + param.replace("_", "-")
        assert flag in every_page, f"backup.{name} {flag} is not in docs/"


@pytest.mark.parametrize("variable", [*config.VARIABLES, DEBUG_VARIABLE])
def test_every_setting_is_in_the_configuration_table_and_the_example(variable):
    every_page = "".join(text(page) for page in PAGES)
    if variable == DEBUG_VARIABLE:
        assert variable in every_page
        return
    assert re.search(rf"^\| `{variable}` \|", text("configuration"), re.M), variable
    assert variable in (REPO / ".env.example").read_text("utf-8"), variable


def test_links_between_pages_name_files_that_exist():
    for path in [REPO / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", path.read_text("utf-8")):
            assert (path.parent / target).exists(), f"{path.name} links to {target}"
