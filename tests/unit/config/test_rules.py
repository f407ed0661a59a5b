"""rules.py: the longest-prefix match of registries.conf, and the endpoints of a pull."""

from __future__ import annotations

import pytest

from stepbuild.config.rules import Endpoint, Mirror, RegistryRule, RegistryRules
from stepbuild.errors import RegistryBlocked

RULES = RegistryRules([
    RegistryRule("docker.io", mirrors=(Mirror("mirror.example:5000"),
                                       Mirror("second.example/hub"))),
    RegistryRule("docker.io/library", mirrors=(Mirror("lib-mirror.example"),)),
    RegistryRule("registry.example/team", location="moved.example/team2"),
    RegistryRule("*.corp.example", insecure=True),
    RegistryRule("blocked.example", blocked=True, source="/etc/containers/registries.conf"),
    RegistryRule("second.example", ca_file="/etc/second-ca.crt"),
    RegistryRule("mirror.example:5000", insecure=True),
])


@pytest.mark.parametrize(("name", "prefix", "matched"), [
    ("docker.io/library/busybox", "docker.io/library", "docker.io/library"),
    ("docker.io/alice/app", "docker.io", "docker.io"),
    ("docker.io/libraryx/app", "docker.io", "docker.io"),  # only at a '/': not library
    ("registry.example/team/app", "registry.example/team", "registry.example/team"),
    ("a.corp.example/x", "*.corp.example", "a.corp.example"),
    ("b.a.corp.example:5000/x", None, None),  # the port is part of the host
    ("corp.example/x", None, None),  # a wildcard needs a subdomain
    ("registry.example/teamwork/app", None, None),
    ("quay.io/x", None, None),
])
def test_the_longest_prefix_matches(name: str, prefix: str | None, matched: str | None
                                    ) -> None:
    found = RULES.match(name)
    if prefix is None:
        assert found is None
    else:
        assert found is not None
        assert (found[0].prefix, found[1]) == (prefix, matched)


def test_mirrors_come_first_and_keep_the_path_after_the_prefix() -> None:
    assert RULES.pull_endpoints("docker.io", "alice/app", by_digest=False) == [
        Endpoint("mirror.example:5000", "alice/app", insecure=True, mirror=True),
        Endpoint("second.example", "hub/alice/app", ca_file="/etc/second-ca.crt", mirror=True),
        Endpoint("docker.io", "alice/app"),
    ]


def test_a_docker_hub_mirror_serves_library_images_under_library() -> None:
    rules = RegistryRules([RegistryRule("docker.io", mirrors=(Mirror("127.0.0.1:5000"),))])
    assert rules.pull_endpoints("docker.io", "library/busybox", by_digest=False) == [
        Endpoint("127.0.0.1:5000", "library/busybox", mirror=True),
        Endpoint("docker.io", "library/busybox"),
    ]


def test_a_longer_prefix_replaces_the_shorter_ones_mirrors() -> None:
    assert [e.host for e in RULES.pull_endpoints("docker.io", "library/busybox",
                                                 by_digest=False)] == [
        "lib-mirror.example", "docker.io"]


def test_a_relocated_prefix_is_pulled_from_its_location() -> None:
    assert RULES.pull_endpoints("registry.example", "team/app", by_digest=False) == [
        Endpoint("moved.example", "team2/app")]


def test_the_registry_keeps_its_settings_for_pushes() -> None:
    assert RULES.endpoint("x.corp.example", "app") == Endpoint("x.corp.example", "app",
                                                               insecure=True)
    assert RULES.endpoint("quay.io", "app") == Endpoint("quay.io", "app")


def test_a_mirror_setting_beats_the_mirror_hosts_own_rule() -> None:
    rules = RegistryRules([
        RegistryRule("docker.io", mirrors=(Mirror("m.example", insecure=False),)),
        RegistryRule("m.example", insecure=True, ca_file="/ca.crt"),
    ])
    assert rules.pull_endpoints("docker.io", "x/y", by_digest=True)[0] == Endpoint(
        "m.example", "x/y", insecure=False, ca_file="/ca.crt", mirror=True)


@pytest.mark.parametrize(("by_digest", "hosts"), [
    (True, ["all.example", "digest.example", "quay.io"]),
    (False, ["all.example", "tag.example", "quay.io"]),
])
def test_pull_from_mirror_chooses_by_tag_or_digest(by_digest: bool, hosts: list[str]) -> None:
    rules = RegistryRules([RegistryRule("quay.io", mirrors=(
        Mirror("all.example"), Mirror("digest.example", pull_from="digest-only"),
        Mirror("tag.example", pull_from="tag-only")))])
    assert [e.host for e in rules.pull_endpoints("quay.io", "a", by_digest=by_digest)] == hosts


def test_mirror_by_digest_only_skips_mirrors_for_tags() -> None:
    rules = RegistryRules([RegistryRule("quay.io", mirrors=(Mirror("m.example"),),
                                        digest_only_mirrors=True)])
    assert [e.host for e in rules.pull_endpoints("quay.io", "a", by_digest=False)] == [
        "quay.io"]
    assert [e.host for e in rules.pull_endpoints("quay.io", "a", by_digest=True)] == [
        "m.example", "quay.io"]


@pytest.mark.parametrize("use", ["pull", "push"])
def test_a_blocked_registry_names_the_file(use: str) -> None:
    with pytest.raises(RegistryBlocked) as caught:
        if use == "pull":
            RULES.pull_endpoints("blocked.example", "app", by_digest=False)
        else:
            RULES.endpoint("blocked.example", "app")
    assert (caught.value.name, caught.value.source) == (
        "blocked.example/app", "/etc/containers/registries.conf")
    assert "/etc/containers/registries.conf" in caught.value.message


def test_overlaid_rules_replace_those_of_the_same_prefix_only() -> None:
    base = RegistryRules([RegistryRule("docker.io", blocked=True),
                          RegistryRule("quay.io", insecure=True)])
    mine = RegistryRules([RegistryRule("docker.io", mirrors=(Mirror("m.example"),))])
    merged = {r.prefix: r for r in base.overlaid(mine)}
    assert merged["docker.io"] == RegistryRule("docker.io", mirrors=(Mirror("m.example"),))
    assert merged["quay.io"].insecure is True
