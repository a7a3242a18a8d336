"""``pods[i].containers``: the programs a pod runs, with their environment and named ports.

Containers share the pod's network namespace, so port names and (protocol, port) pairs must be
unique across all containers of a pod, not only within one. A command and its environment reach
``execve()`` as C strings, which cannot hold a NUL (nor a name an ``=``).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from vswitch.config.names import DNS_LABEL_MAX, dns_label_problem, port_name_problem
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader, key_path, type_name
from vswitch.model import Container

CONTAINER_KEYS = ("name", "command", "env", "ports")
PORT_KEYS = ("name", "port", "protocol")
PROTOCOLS = ("tcp", "udp")


def read_containers(reader: Reader, pod: Mapping[str, Any],
                    pod_path: str) -> tuple[Container, ...]:
    containers: list[Container] = []
    names: dict[str, str] = {}
    port_names: dict[str, str] = {}
    bindings: dict[tuple[str, int], str] = {}
    for path, entry in reader.entries(pod, pod_path, "containers"):
        reader.check_keys(entry, path, CONTAINER_KEYS)

        name = reader.take(entry, path, "name", "a string", REQUIRED)
        if isinstance(name, str):
            if problem := dns_label_problem(name, DNS_LABEL_MAX):
                name = reader.fail(key_path(path, "name"), problem)
            elif name in names:
                name = reader.fail(
                    key_path(path, "name"),
                    f"duplicate container name {name!r} (first used at {names[name]})",
                )
            else:
                names[name] = key_path(path, "name")

        command = read_command(reader, entry, path)
        env = read_env(reader, entry, path)
        ports = read_ports(reader, entry, path, port_names, bindings)

        if (isinstance(name, str) and isinstance(command, tuple) and isinstance(env, dict)
                and isinstance(ports, dict)):
            containers.append(
                Container(
                    name=name,
                    command=command,
                    env=MappingProxyType(dict(env)),
                    ports=MappingProxyType(ports),
                )
            )
    return tuple(containers)


def read_command(reader: Reader, container: Mapping[str, Any],
                 path: str) -> tuple[str, ...] | Marker:
    raw = reader.take(container, path, "command", "an array", REQUIRED)
    if raw is INVALID:
        return INVALID
    command_path = key_path(path, "command")
    if not raw:
        return reader.fail(command_path, "must not be empty; give the program and its arguments")
    valid = True
    for index, word in enumerate(raw):
        word_path = f"{command_path}[{index}]"
        if not isinstance(word, str):
            valid = False
            reader.fail(word_path, f"expected a string, got {type_name(word)}")
        elif "\0" in word:
            valid = False
            reader.fail(word_path, "must not contain a NUL character")
    if valid and not raw[0]:
        return reader.fail(f"{command_path}[0]", "the program name must not be empty")
    return tuple(raw) if valid else INVALID


def read_env(reader: Reader, container: Mapping[str, Any], path: str) -> dict[str, str] | Marker:
    """The environment table; a wrong entry is reported but does not make the table INVALID."""
    env = reader.take_str_map(container, path, "env")
    if isinstance(env, dict):
        env_path = key_path(path, "env")
        for key, value in env.items():
            if not key or "=" in key or "\0" in key:
                reader.fail(
                    key_path(env_path, key),
                    "an environment variable name must be non-empty and contain no '=' or NUL",
                )
            elif "\0" in value:
                reader.fail(key_path(env_path, key),
                            "an environment value must not contain a NUL character")
    return env


def read_ports(
    reader: Reader,
    container: Mapping[str, Any],
    path: str,
    port_names: dict[str, str],
    bindings: dict[tuple[str, int], str],
) -> dict[str, tuple[str, int]] | Marker:
    """A container's ports; ``port_names`` and ``bindings`` hold those of the pod so far."""
    raw = reader.take(container, path, "ports", "an array of tables", [])
    if raw is INVALID:
        return INVALID
    ports: dict[str, tuple[str, int]] = {}
    valid = True
    for index, entry in enumerate(raw):
        port_path = f"{path}.ports[{index}]"
        if not isinstance(entry, dict):
            valid = False
            reader.fail(port_path, f"expected a table, got {type_name(entry)}")
            continue
        errors_before = len(reader.errors)
        reader.check_keys(entry, port_path, PORT_KEYS)
        name = reader.take(entry, port_path, "name", "a string", REQUIRED)
        if isinstance(name, str):
            if problem := port_name_problem(name):
                reader.fail(key_path(port_path, "name"), problem)
            elif name in port_names:
                reader.fail(
                    key_path(port_path, "name"),
                    f"duplicate port name {name!r} in this pod (first used at {port_names[name]})",
                )
            else:
                port_names[name] = key_path(port_path, "name")
        number = reader.take_int(entry, port_path, "port", REQUIRED, 1, 65535)
        protocol = reader.take(entry, port_path, "protocol", "a string", "tcp")
        if isinstance(protocol, str) and protocol not in PROTOCOLS:
            protocol = reader.fail(
                key_path(port_path, "protocol"), f"must be 'tcp' or 'udp', got {protocol!r}"
            )
        if isinstance(number, int) and isinstance(protocol, str):
            binding = (protocol, number)
            if binding in bindings:
                reader.fail(
                    key_path(port_path, "port"),
                    f"{protocol} port {number} is already declared at {bindings[binding]}; "
                    "containers of a pod share one port space",
                )
            else:
                bindings[binding] = key_path(port_path, "port")
        if len(reader.errors) != errors_before:
            valid = False
            continue
        assert isinstance(name, str) and isinstance(protocol, str) and isinstance(number, int)
        ports[name] = (protocol, number)
    return ports if valid else INVALID
