"""stepbuild.sandbox.network's pure part: the resolv.conf of a step on the private network."""

from __future__ import annotations

from stepbuild.sandbox.network import resolv_conf


def test_resolv_conf_keeps_search_and_options_and_uses_only_the_stacks_resolver() -> None:
    host = ("# generated\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nsearch corp.example\n"
            "options edns0 trust-ad\n\n")
    assert resolv_conf(host) == ("nameserver 10.0.2.3\nsearch corp.example\n"
                                 "options edns0 trust-ad\n")


def test_resolv_conf_without_a_host_file() -> None:
    assert resolv_conf("") == "nameserver 10.0.2.3\n"
