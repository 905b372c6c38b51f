"""The demo (.ci/demo) echoes each command it runs; a user copies those lines. The echo must
read back, through a shell, as the very words that ran."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

DEMO = (Path(__file__).resolve().parents[2] / ".ci" / "demo").read_text()
WORDS = re.search(r"^words\(\) \{\n.*?^\}\n", DEMO, flags=re.S | re.M)


@pytest.mark.parametrize(
    "argv",
    [
        ["curl", "-s", "-H", "Host: echo.example.com", "http://127.0.0.1:8080/hello"],
        ["curl", "-s", "-o", "/dev/null", "-w", "%header{x-echo}\\n", "-H", "x-canary: always",
         "http://127.0.0.1:8080/"],
        ["curl", "-sk", "-w", "%{http_code} %header{x-echo}\\n", "--resolve",
         "echo.example.com:8443:127.0.0.1", "https://echo.example.com:8443/"],
        ["dig", "@127.0.0.1", "-p", "10053", "+noall", "+answer", "SRV", "_http._tcp.web.shop"],
        ["echo", "it's", "", "$HOME", "a\"b", "back\\slash", "*", "~", "a;b", "(x)"],
    ],
)  # fmt: skip
def test_an_echoed_command_reads_back_as_the_words_that_ran(argv: list[str]) -> None:
    assert WORDS is not None, ".ci/demo lost its words() function"
    script = WORDS.group(0) + 'line=$(words "$@")\nprintf "%s\\n" "$line"\neval "set -- $line"\n'
    script += 'printf "%s\\0" "$@"\n'
    out = subprocess.run(
        ["bash", "-c", script, "bash", *argv], capture_output=True, text=True, check=True
    ).stdout
    line, _, words = out.partition("\n")
    assert words.split("\0")[:-1] == argv, line
    if all(re.fullmatch(r"[\w./:@%+=,-]+", w) for w in argv):
        assert line == " ".join(argv)  # plain words stay plain
