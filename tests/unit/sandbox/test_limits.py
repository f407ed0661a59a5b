"""sandbox/limits.py: docker's spellings of the limit flags, and the Limits rules."""

from __future__ import annotations

import pytest

from stepbuild.sandbox.limits import (
    GIB,
    KIB,
    MIB,
    UNLIMITED,
    Limits,
    Ulimit,
    human_size,
    parse_add_host,
    parse_memory_swap,
    parse_size,
    parse_ulimit,
)
from stepbuild.sandbox.spec import SandboxSpec, child_payload


@pytest.mark.parametrize(("text", "size"), [
    ("64m", 64 * MIB), ("64M", 64 * MIB), ("64mb", 64 * MIB), ("64MiB", 64 * MIB),
    ("1g", GIB), ("512k", 512 * KIB), ("1048576", MIB), ("1.5g", 3 * GIB // 2),
    ("100b", 100), (" 2 m", 2 * MIB),
])
def test_sizes_read_as_docker_reads_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "lots", "-1", "64x", "1e9", "64 m b c"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_memory_swap_minus_one_is_unlimited() -> None:
    assert parse_memory_swap("-1") == UNLIMITED
    assert parse_memory_swap("128m") == 128 * MIB


@pytest.mark.parametrize(("text", "ulimit"), [
    ("nofile=64:128", Ulimit("nofile", 64, 128)),
    ("nofile=64", Ulimit("nofile", 64, 64)),
    ("nproc=-1", Ulimit("nproc", -1, -1)),
    ("core=0:-1", Ulimit("core", 0, -1)),
])
def test_ulimits(text: str, ulimit: Ulimit) -> None:
    assert parse_ulimit(text) == ulimit


@pytest.mark.parametrize("text", ["nofile", "files=1", "nofile=a", "nofile=128:64",
                                  "nofile=-1:64", "nofile=-2"])
def test_bad_ulimits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--ulimit"):
        parse_ulimit(text)


@pytest.mark.parametrize(("text", "host"), [
    ("db:192.0.2.1", ("db", "192.0.2.1")),
    ("db=192.0.2.1", ("db", "192.0.2.1")),
    ("db.example:::1", ("db.example", "::1")),
    ("db=::1", ("db", "::1")),
    ("db:[2001:db8::1]", ("db", "2001:db8::1")),
])
def test_add_host(text: str, host: tuple[str, str]) -> None:
    assert parse_add_host(text) == host


@pytest.mark.parametrize("text", ["db", ":192.0.2.1", "db:nowhere", "d b:192.0.2.1",
                                  "db:host-gateway"])
def test_bad_add_host_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--add-host"):
        parse_add_host(text)


@pytest.mark.parametrize(("fields", "message"), [
    ({"memory": 4 * MIB}, "minimum is 6 MiB"),
    ({"memory_swap": 128 * MIB}, "needs --memory"),
    ({"memory": 64 * MIB, "memory_swap": 32 * MIB}, "at least --memory"),
    ({"pids": 0}, "--pids-limit"),
    ({"cpu_shares": 1}, "--cpu-shares"),
    ({"cpu_period": 10}, "--cpu-period"),
    ({"cpu_quota": 10}, "--cpu-quota"),
    ({"cpuset_cpus": "0-"}, "--cpuset-cpus"),
    ({"cgroup_parent": "a/../../b"}, "--cgroup-parent"),
])
def test_inconsistent_limits_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**fields)  # type: ignore[arg-type]


def test_defaults_limit_nothing_and_swap_defaults_to_twice_memory() -> None:
    assert not Limits().cgroup_limited()
    assert Limits().swap_total() is None
    assert Limits(memory=64 * MIB).swap_total() == 128 * MIB
    assert Limits(memory=64 * MIB, memory_swap=96 * MIB).swap_total() == 96 * MIB
    assert Limits(memory=64 * MIB, memory_swap=UNLIMITED).swap_total() is None
    assert Limits(cpuset_cpus="0").cgroup_limited()
    assert not Limits(ulimits=(Ulimit("nofile", 1, 1),), add_hosts=(("a", "1.2.3.4"),),
                      shm_size=MIB).cgroup_limited()


def test_human_size() -> None:
    assert [human_size(n) for n in (64 * MIB, GIB, 1536 * KIB, 100)] == [
        "64 MiB", "1 GiB", "1536 KiB", "100 bytes"]


def test_limits_survive_the_spec_json_round_trip_and_reach_the_child() -> None:
    limits = Limits(memory=64 * MIB, ulimits=(Ulimit("nofile", 64, 128),),
                    add_hosts=(("db", "192.0.2.1"),), shm_size=8 * MIB)
    spec = SandboxSpec(rootfs="/r", argv=("true",), env=(), cwd="/", limits=limits)
    assert SandboxSpec.from_json(spec.to_json()) == spec
    payload = child_payload(spec)
    assert payload["rlimits"] == [["nofile", 7, 64, 128]]
    shm = next(m for m in payload["mounts"] if m["target"] == "/dev/shm")  # type: ignore[attr-defined]
    assert ["size", str(8 * MIB)] in shm["params"]


def test_default_shm_is_dockers_64_mib() -> None:
    payload = child_payload(SandboxSpec(rootfs="/r", argv=("true",), env=(), cwd="/"))
    shm = next(m for m in payload["mounts"] if m["target"] == "/dev/shm")  # type: ignore[attr-defined]
    assert ["size", str(64 * MIB)] in shm["params"]
    assert payload["rlimits"] == []
