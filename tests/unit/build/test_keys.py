"""Cache keys are stable, content-based and blind to what must not matter."""

from __future__ import annotations

from stepbuild.build import keys

SAMPLE_INPUTS = {"op": "run", "argv": ["/bin/sh", "-c", "echo hi"], "env": ["PATH=/bin"],
                 "user": "0:0", "cwd": "/", "network": "host"}


def test_pinned_key_does_not_change_without_a_schema_bump() -> None:
    # If this fails, the key serialisation changed: bump KEY_SCHEMA and update the pin.
    parent = keys.state_key(["sha256:" + "0" * 64], {"Env": ["PATH=/bin"]}, "linux/amd64")
    assert keys.step_key(parent, SAMPLE_INPUTS) == "68ff92ce7f6df84d32e846a1c15cdb8c"


def test_key_depends_on_parent_and_inputs() -> None:
    a = keys.state_key([], {}, "linux/amd64")
    b = keys.state_key(["sha256:" + "1" * 64], {}, "linux/amd64")
    assert keys.step_key(a, SAMPLE_INPUTS) != keys.step_key(b, SAMPLE_INPUTS)
    changed = {**SAMPLE_INPUTS, "cwd": "/app"}
    assert keys.step_key(a, SAMPLE_INPUTS) != keys.step_key(a, changed)


def test_the_same_state_of_two_platforms_is_two_states() -> None:
    # issue 15: amd64 and arm64 steps never share a record
    amd64 = keys.state_key(["sha256:" + "1" * 64], {"Env": ["PATH=/bin"]}, "linux/amd64")
    arm64 = keys.state_key(["sha256:" + "1" * 64], {"Env": ["PATH=/bin"]}, "linux/arm64")
    assert amd64 != arm64
    assert keys.step_key(amd64, SAMPLE_INPUTS) != keys.step_key(arm64, SAMPLE_INPUTS)


def test_key_ignores_dict_order() -> None:
    reordered = dict(reversed(list(SAMPLE_INPUTS.items())))
    assert keys.step_key("p", SAMPLE_INPUTS) == keys.step_key("p", reordered)


def test_proxy_variables_are_dropped() -> None:
    env = ["PATH=/bin", "http_proxy=http://p:3128", "HTTPS_PROXY=x", "NO_PROXY_X=1"]
    assert keys.without_proxies(env) == ["PATH=/bin", "NO_PROXY_X=1"]
