"""The README's bad-input and fault catalogue shows the lines the code prints:
a test that checks a message also checks that the README has it, word for
word, with the parts that vary per run (a temporary path, a pid, a host)
written as placeholders (<file>, <dir>, <pid>, ...)."""

from conftest import ROOT

SECTION = "## Bad input and faults"


def catalogue() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def rows() -> list[str]:
    return [line for line in catalogue().splitlines()
            if line.startswith("| ") and not line.startswith(("| input", "| **"))]


def in_readme(message: str, **placeholders) -> str:
    """`message` with each value of `placeholders` written as <name>; asserted to be in the catalogue."""
    for name, value in sorted(placeholders.items(), key=lambda item: -len(str(item[1]))):  # longest first
        message = message.replace(str(value), f"<{name}>")
    assert message in catalogue(), f"the README's catalogue lacks the line:\n{message}"
    return message
