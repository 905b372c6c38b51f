"""Every valued flag of every command, given a bad value, ends the real ``mesh`` command
before anything starts with one sentence naming the flag and what it wants (exit status 2),
never click's generic wording and never a traceback. The last test checks that the table
covers every flag: a new flag comes with its row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

MESH = [sys.executable, "-m", "mesh.cli"]
DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")
# What each command needs besides the flag under test (parsing stops at the bad value).
BASE = {"up": ["up", "-f", DEMO], "control": ["control", "-f", DEMO], "get": ["get", "svc"],
        "config dump": ["config", "dump", "dns"], "exec": ["exec"]}  # fmt: skip

TTL = "is not a whole number of seconds from 0 to 3,600"
HEALTH = "is not a number of seconds from 0 to 3,600"
STALE = "is not a number of seconds from 0 to 86,400"
RATIO = "is not a number from 0 to 1"
NO_PORT = "has no port: write HOST:PORT or http://HOST:PORT"
LABEL = (
    "labels are 1 to 63 lower-case letters, digits and '-', starting and ending with a "
    "letter or digit"
)
BOX = ("use 1 to 40 lower-case letters, digits and '-', starting with a letter or digit "
       "(it prefixes network namespace names)")  # fmt: skip
LEVELS = "'debug', 'info', 'warning', 'error'"

# (command, flag, bad value, what follows "Error: Invalid value for '<flag>': ")
ROWS: list[tuple[str, str, str, str]] = [
    # numbers: not a number, negative, zero where it means nothing, huge, nan, inf
    ("up", "--ttl", "abc", f"'abc' {TTL}"),
    ("up", "--ttl", "-1", f"'-1' {TTL}"),
    ("control", "--ttl", "99999999999999999999", f"'99999999999999999999' {TTL}"),
    ("control", "--ttl", "2.5", f"'2.5' {TTL}"),
    ("up", "--max-fails", "many", "'many' is not a whole number from 0 to 1,000"),
    ("dns", "--max-fails", "1001", "'1001' is not a whole number from 0 to 1,000"),
    ("up", "--health-check", "nan", f"'nan' {HEALTH}"),
    ("dns", "--health-check", "-0.5", f"'-0.5' {HEALTH}"),
    ("dns", "--health-check", "1e309", f"'1e309' {HEALTH}"),
    ("up", "--max-forwards", "0", "'0' is not a whole number from 1 to 1,000,000"),
    ("dns", "--max-forwards", "1k", "'1k' is not a whole number from 1 to 1,000,000"),
    ("up", "--forward-cache-size", "-5",
     "'-5' is not a whole number from 0 to 10,000,000"),
    ("dns", "--forward-cache-size", "1e6", "'1e6' is not a whole number from 0 to 10,000,000"),
    ("up", "--serve-stale", "inf", f"'inf' {STALE}"),
    ("dns", "--serve-stale", "forever", f"'forever' {STALE}"),
    ("dns", "--workers", "0", "'0' is not a whole number from 1 to 256"),
    ("dns", "--workers", "many", "'many' is not a whole number from 1 to 256"),
    ("proxy", "--udp-idle-timeout", "0", "'0' is not a number of seconds from 0.1 to 86,400"),
    ("proxy", "--udp-idle-timeout", "30s",
     "'30s' is not a number of seconds from 0.1 to 86,400"),
    ("up", "--trace-sample-ratio", "1.5", f"'1.5' {RATIO}"),
    ("ingress", "--trace-sample-ratio", "half", f"'half' {RATIO}"),
    ("ingress", "--trace-sample-ratio", "nan", f"'nan' {RATIO}"),
    # listen addresses
    ("up", "--control-listen", "127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
    ("control", "--control-listen", "127.0.0.1:-1", "'127.0.0.1:-1': port -1 is out of range 0-65535"),
    ("up", "--dns-listen", "::1:53", "'::1:53': write an IPv6 address in brackets, as [::1]:53"),
    ("dns", "--dns-listen", "localhost:dns", "'localhost:dns': port 'dns' is not a number"),
    ("up", "--admin-listen", "web:80", "'web:80': 'web' is not an IP address"),
    ("control", "--admin-listen", "1.2.3:80", "'1.2.3:80': '1.2.3' is not an IP address"),
    ("dns", "--admin-listen", ":80", "':80' is not HOST:PORT"),
    ("proxy", "--admin-listen", "127.0.0.1:65536", "'127.0.0.1:65536': port 65536 is out of range 0-65535"),
    ("ingress", "--admin-listen", "127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
    ("up", "--gateway-listen", "8080", "'8080' is not HOST:PORT"),
    ("ingress", "--gateway-listen", "[::1]", "'[::1]' has no port: write HOST:PORT, as [::1]:53"),
    ("up", "--gateway-tls-listen", "999.0.0.1:8443", "'999.0.0.1:8443': '999.0.0.1' is not an IP address"),
    ("ingress", "--gateway-tls-listen", "127.0.0.1:x", "'127.0.0.1:x': port 'x' is not a number"),
    ("up", "--upstream", "8.8.8.8", "'8.8.8.8' is not HOST:PORT"),
    ("dns", "--upstream", "dns.google:53", "'dns.google:53': 'dns.google' is not an IP address"),
    ("dns", "--upstream", "127.0.0.1:0", "'127.0.0.1:0': port 0 is not a server's port"),
    # URLs
    ("dns", "--control", "controlplane", f"'controlplane' {NO_PORT}"),
    ("proxy", "--control", "-x-:15010", "'-x-:15010': '-x-' is not an IP address or a host name"),
    ("ingress", "--control", "http://10.0.0.300:15010", "'http://10.0.0.300:15010': '10.0.0.300' is not an IP address"),
    ("get", "--control", "ftp://127.0.0.1:1", "'ftp://127.0.0.1:1' is not http://HOST:PORT or HOST:PORT"),
    ("config dump", "--admin", "15000", f"'15000' {NO_PORT}"),
    ("config dump", "--control", "127.0.0.1:0", "'127.0.0.1:0': the port is not a number in 1-65535"),
    ("up", "--otlp-endpoint", "collector", f"'collector' {NO_PORT}"),
    ("ingress", "--otlp-endpoint", "https://collector:4318", "'https://collector:4318' is not http://HOST:PORT or HOST:PORT"),
    ("control", "--gateway-address", "-lb-", "'-lb-' is not an IP address or a host name"),
    ("control", "--gateway-address", "10.0.0.256", "'10.0.0.256' is not an IP address"),
    ("proxy", "--node-ip", "node-1", "'node-1' is not an IP address"),
    # ranges
    ("up", "--service-cidr", "10.0.0.0/33", "'10.0.0.0/33' is not a CIDR range such as 10.96.0.0/16"),
    ("control", "--service-cidr", "", "at least one service range is required"),
    ("proxy", "--service-cidr", "fd00::/64,fd01::/64", "two IPv6 service ranges (fd00::/64, fd01::/64): a second range must be of the other family"),
    ("up", "--pod-cidr", "fd00::/64", "fd00::/64: an IPv4 pod range is required (IPv6 may follow)"),
    ("up", "--gateway-cidr", "10.0.0.1/8", "'10.0.0.1/8' is not a network range: 10.0.0.1/8 has host bits set"),
    ("control", "--gateway-cidr", "10.0.0.0/31", "'10.0.0.0/31' is too small for Gateway addresses"),
    # names
    ("up", "--zone", "cluster..local", f"'cluster..local' has the label '': {LABEL}"),
    ("control", "--zone", "Cluster_Local", f"'Cluster_Local' has the label 'cluster_local': {LABEL}"),
    ("dns", "--zone", "", "'' is empty"),
    ("up", "--node-name", "node 1", f"'node 1' has the label 'node 1': {LABEL}"),
    ("control", "--node-name", "-node", f"'-node' has the label '-node': {LABEL}"),
    ("up", "--box", "My_Box", f"'My_Box': {BOX}"),
    ("down", "--box", "", f"'': {BOX}"),
    ("exec", "--box", "../x", f"'../x': {BOX}"),
    ("get", "--namespace", "Shop", "'Shop' is not a namespace name: 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit"),
    ("get", "--selector", "app in (web", "unbalanced '('"),
    # choices
    ("up", "--pod-mode", "all", "'all' is not one of 'disabled', 'insecure', 'verified'."),
    ("control", "--pod-mode", "on", "'on' is not one of 'disabled', 'insecure', 'verified'."),
    ("up", "--upstream-policy", "fastest", "'fastest' is not one of 'random', 'round_robin', 'sequential'."),
    ("dns", "--upstream-policy", "rr", "'rr' is not one of 'random', 'round_robin', 'sequential'."),
    ("proxy", "--mode", "ipvs", "'ipvs' is not one of 'userspace', 'nftables'."),
    ("get", "--output", "table", "'table' is not one of 'wide', 'json', 'yaml', 'name'."),
    ("up", "--log-level", "trace", f"'trace' is not one of {LEVELS}."),
    ("control", "--log-level", "warn", f"'warn' is not one of {LEVELS}."),
    ("dns", "--log-level", "all", f"'all' is not one of {LEVELS}."),
    ("proxy", "--log-level", "0", f"'0' is not one of {LEVELS}."),
    ("ingress", "--log-level", "x", f"'x' is not one of {LEVELS}."),
    ("up", "--log-format", "yaml", "'yaml' is not one of 'auto', 'json', 'text'."),
    ("control", "--log-format", "logfmt", "'logfmt' is not one of 'auto', 'json', 'text'."),
    ("dns", "--log-format", "", "'' is not one of 'auto', 'json', 'text'."),
    ("proxy", "--log-format", "JSON", "'JSON' is not one of 'auto', 'json', 'text'."),
    ("ingress", "--log-format", "plain", "'plain' is not one of 'auto', 'json', 'text'."),
    # files
    ("up", "--filename", "/nonexistent", "Path '/nonexistent' does not exist."),
    ("control", "--filename", "/nonexistent/x.yaml", "Path '/nonexistent/x.yaml' does not exist."),
    ("dns", "--config", "/nonexistent.json", "File '/nonexistent.json' does not exist."),
    ("proxy", "--config", "/", "File '/' is a directory."),
    ("ingress", "--config", "/nonexistent.yaml", "File '/nonexistent.yaml' does not exist."),
    ("up", "--client-forwarded-headers", "yes", "'yes' is not one of 'drop', 'trust'."),
    ("ingress", "--client-forwarded-headers", "append", "'append' is not one of 'drop', 'trust'."),
    ("up", "--access-log", "/", "File '/' is a directory."),
    ("ingress", "--access-log", "/", "File '/' is a directory."),
]  # fmt: skip

SHORT = {"--filename": "'-f' / '--filename'", "--namespace": "'-n' / '--namespace'",
         "--selector": "'-l' / '--selector'", "--output": "'-o' / '--output'"}  # fmt: skip


@pytest.mark.parametrize(("command", "flag", "value", "reason"), ROWS)
def test_a_bad_flag_value_is_one_sentence(command: str, flag: str, value: str, reason: str) -> None:
    args = [*BASE.get(command, [command]), flag, value]
    if command == "exec":
        args += ["web-1", "--", "true"]
    out = subprocess.run([*MESH, *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr
    named = SHORT.get(flag, f"'{flag}'")
    assert out.stderr.strip().splitlines()[-1] == f"Error: Invalid value for {named}: {reason}"
    assert out.returncode == 2


def _valued_flags() -> set[tuple[str, str]]:
    from mesh.cli import main

    ctx = click.Context(main)
    found = set()

    def walk(group: click.Group, prefix: str) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            path = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                walk(command, path)
            elif command is not None:
                for p in command.params:
                    if isinstance(p, click.Option) and not p.is_flag and not p.hidden:
                        found.add((path, p.opts[-1]))

    walk(main, "")
    return found


def test_the_table_covers_every_valued_flag() -> None:
    assert _valued_flags() == {(command, flag) for command, flag, _, _ in ROWS}
