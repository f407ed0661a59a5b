"""connection.py: each registry's TLS settings from the rules and the flags, and the
endpoints of a pull."""

from __future__ import annotations

from stepbuild.config.rules import Endpoint, Mirror, RegistryRule, RegistryRules
from stepbuild.distribution.connection import Connection

RULES = RegistryRules([
    RegistryRule("insecure.example", insecure=True),
    RegistryRule("own-ca.example", ca_file="/etc/own-ca.crt"),
    RegistryRule("docker.io", mirrors=(Mirror("mirror.example:5000"),)),
])


def test_insecure_applies_to_its_registry_only() -> None:
    connection = Connection(registries=RULES)
    assert connection.tls(RULES.endpoint("insecure.example", "a")) == (False, None)
    assert connection.tls(RULES.endpoint("quay.io", "a")) == (True, None)


def test_tls_verify_false_still_applies_to_every_registry() -> None:
    connection = Connection(tls_verify=False, registries=RULES)
    assert connection.tls(RULES.endpoint("quay.io", "a"))[0] is False
    assert connection.tls(RULES.endpoint("own-ca.example", "a"))[0] is False


def test_the_rules_ca_file_beats_the_flag_for_its_registry() -> None:
    connection = Connection(ca_file="/flag-ca.crt", registries=RULES)
    assert connection.tls(RULES.endpoint("own-ca.example", "a")) == (True, "/etc/own-ca.crt")
    assert connection.tls(RULES.endpoint("quay.io", "a")) == (True, "/flag-ca.crt")


def test_pull_endpoints_come_from_the_rules() -> None:
    assert Connection(registries=RULES).pull_endpoints("docker.io", "library/busybox",
                                                       by_digest=False) == [
        Endpoint("mirror.example:5000", "library/busybox", mirror=True),
        Endpoint("docker.io", "library/busybox")]
    assert Connection().pull_endpoints("docker.io", "library/busybox", by_digest=False) == [
        Endpoint("docker.io", "library/busybox")]
