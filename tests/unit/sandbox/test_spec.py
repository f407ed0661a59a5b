"""stepbuild.sandbox.spec: the sandbox policy as data — no root, no syscalls."""

from __future__ import annotations

import json
import marshal

import pytest

from stepbuild.sandbox.spec import (
    CAPABILITIES,
    DEV_NODES,
    MASKED_PATHS,
    READONLY_PATHS,
    Mount,
    MountOptions,
    SandboxSpec,
    all_mounts,
    capability_mask,
    child_payload,
    etc_mounts,
    standard_mounts,
)

SPEC = SandboxSpec(rootfs="/var/lib/stepbuild/tmp/merged", argv=("/bin/sh", "-c", "make"),
                   env=("PATH=/usr/bin:/bin", "EMPTY="), cwd="/src")


def test_json_round_trip_keeps_every_field() -> None:
    spec = SandboxSpec(
        rootfs="/m", argv=("a", "b c"), env=("K=V=W",), cwd="/w", uid=1000, gid=100,
        groups=(10, 20), hostname="h", network="none", etc_dir="/e",
        mounts=(Mount("tmpfs", "", "/tmp", options="size=1m"),
                Mount("bind", "/ctx", "/src", readonly=True, options="rbind")),
    )
    text = spec.to_json()
    assert json.loads(text)["mounts"][1]["source"] == "/ctx"
    assert SandboxSpec.from_json(text) == spec
    assert SandboxSpec.from_json(SPEC.to_json()) == SPEC


@pytest.mark.parametrize("change", [
    {"rootfs": "relative"}, {"argv": ()}, {"cwd": "src"}, {"env": ("NOEQUALS",)},
    {"network": "bridge"}, {"network": "private"}, {"network": "private", "netns": "rel"},
    {"netns": "/run/netns/build"}, {"hostname": ""}, {"hostname": "x" * 65}, {"uid": -1},
    {"groups": (2**32,)}, {"argv": ("a\0b",)}, {"env": ("K=\0",)},
])
def test_invalid_spec_is_refused(change: dict[str, object]) -> None:
    fields = {"rootfs": "/m", "argv": ("true",), "env": (), "cwd": "/"} | change
    with pytest.raises(ValueError):
        SandboxSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "source", "target", "options"), [
    ("overlay", "", "/x", ""),  # not an allowed kind
    ("tmpfs", "", "x", ""),  # relative target
    ("tmpfs", "", "/a/../b", ""),  # not normalised
    ("tmpfs", "", "/a/", ""),
    ("bind", "relative/src", "/x", ""),
    ("bind", "/src", "/x", "size=1m"),  # filesystem parameter on a bind
    ("tmpfs", "", "/x", "create=fifo"),
])
def test_invalid_mount_is_refused(kind: str, source: str, target: str, options: str) -> None:
    with pytest.raises(ValueError):
        Mount(kind, source, target, options=options)


@pytest.mark.parametrize(("mount", "expected"), [
    (Mount("tmpfs", "", "/t"), MountOptions(attrs=("nodev",))),
    (Mount("tmpfs", "", "/t", readonly=True, options="nosuid, noexec,mode=1777,size=1m"),
     MountOptions(attrs=("nodev", "noexec", "nosuid", "ro"),
                  params=(("mode", "1777"), ("size", "1m")))),
    (Mount("devpts", "", "/p", options="dev,newinstance,gid=5,create=dir,optional"),
     MountOptions(params=(("newinstance", None), ("gid", "5")), optional=True, create="dir")),
    (Mount("bind", "/s", "/t", options="rbind,ro"),
     MountOptions(attrs=("nodev", "ro"), recursive=True)),
    (Mount("mask", "/dev/null", "/proc/kcore", options="dev"), MountOptions(optional=True)),
    (Mount("readonly", "", "/proc/sys"), MountOptions(attrs=("nodev",), optional=True)),
])
def test_options_are_parsed_with_nodev_by_default(mount: Mount, expected: MountOptions) -> None:
    assert mount.parsed() == expected


def _by_target(mounts: tuple[Mount, ...]) -> dict[str, Mount]:
    return {m.target: m for m in mounts}


def test_standard_mounts_cover_dockers_paths() -> None:
    mounts = _by_target(standard_mounts())
    assert {t for t, m in mounts.items() if m.kind == "mask"} == set(MASKED_PATHS)
    assert {t for t, m in mounts.items() if m.kind == "readonly"} == set(READONLY_PATHS)
    assert all(mounts[f"/dev/{n}"].source == f"/dev/{n}" for n in DEV_NODES)
    assert mounts["/sys"].readonly and mounts["/sys"].source == "/sys"  # the fallback bind
    assert mounts["/dev/ptmx"] == Mount("symlink", "pts/ptmx", "/dev/ptmx")


def test_only_device_nodes_devpts_and_masks_allow_devices() -> None:
    with_devices = {m.target for m in standard_mounts() if "nodev" not in m.parsed().attrs}
    assert with_devices == {f"/dev/{n}" for n in DEV_NODES} | {"/dev/pts"} | set(MASKED_PATHS)
    assert {"nodev", "nosuid", "noexec"} <= set(_by_target(standard_mounts())["/proc"]
                                                 .parsed().attrs)


def test_mounts_come_after_the_mounts_they_sit_on() -> None:
    targets = [m.target for m in standard_mounts()]
    for i, target in enumerate(targets):
        parents = [t for t in targets if target.startswith(t + "/")]
        assert all(targets.index(p) < i for p in parents), target


def test_mount_points_are_created_only_inside_our_own_dev_tmpfs() -> None:
    created = [m.target for m in standard_mounts() if m.parsed().create]
    assert created and all(t.startswith("/dev/") for t in created)


def test_etc_files_are_optional_binds_from_etc_dir() -> None:
    assert etc_mounts("") == ()
    mounts = etc_mounts("/scratch/step1")
    assert [(m.source, m.target) for m in mounts] == [
        ("/scratch/step1/hosts", "/etc/hosts"),
        ("/scratch/step1/resolv.conf", "/etc/resolv.conf"),
        ("/scratch/step1/hostname", "/etc/hostname"),
    ]
    assert all(m.kind == "bind" and m.parsed().optional for m in mounts)


def test_extra_mounts_come_last() -> None:
    extra = Mount("tmpfs", "", "/proc")  # even one that covers a standard mount
    mounts = all_mounts(SandboxSpec(rootfs="/m", argv=("x",), env=(), cwd="/", etc_dir="/e",
                                    mounts=(extra,)))
    assert mounts[-1] is extra
    assert mounts[:-1] == standard_mounts() + etc_mounts("/e")


def test_dockers_default_capability_mask() -> None:
    assert capability_mask() == 0x00000000A80425FB


def test_child_payload_is_plain_marshallable_data() -> None:
    payload = child_payload(SPEC)
    assert marshal.loads(marshal.dumps(payload)) == payload
    assert payload["capabilities"] == 0xA80425FB
    assert payload["argv"] == ["/bin/sh", "-c", "make"] and payload["network"] == "host"
    mounts = payload["mounts"]
    assert isinstance(mounts, list) and len(mounts) == len(standard_mounts())
    assert mounts[0] == {"kind": "proc", "source": "/proc", "target": "/proc",
                         "attrs": ["nodev", "noexec", "nosuid"], "params": [],
                         "recursive": False, "optional": True, "create": ""}


def test_private_network_names_the_namespace_to_join() -> None:
    spec = SandboxSpec(rootfs="/m", argv=("true",), env=(), cwd="/", network="private",
                       netns="/store/tmp/net-@x/netns")
    payload = child_payload(spec)
    assert (payload["network"], payload["netns"]) == ("private", "/store/tmp/net-@x/netns")
    assert SandboxSpec.from_json(spec.to_json()) == spec


def test_devpts_leaves_out_the_tty_group_where_gid_5_is_not_mapped() -> None:
    """Rootless without subordinate ids: devpts refuses gid=5, an id the namespace lacks."""
    assert "gid=5" in _by_target(standard_mounts())["/dev/pts"].options
    assert "gid=" not in _by_target(standard_mounts(tty_gid=False))["/dev/pts"].options
    payload = child_payload(SPEC, tty_gid=False)
    devpts = [m for m in payload["mounts"] if m["target"] == "/dev/pts"]  # type: ignore[union-attr]
    assert devpts and ["gid", "5"] not in devpts[0]["params"]


def test_a_chroot_spec_has_no_mounts_and_drops_chroot_and_mknod() -> None:
    spec = SandboxSpec(rootfs="/r", argv=("true",), env=(), cwd="/", isolation="chroot")
    payload = child_payload(spec)
    assert payload["mounts"] == [] and payload["isolation"] == "chroot"
    caps = payload["capabilities"]
    assert isinstance(caps, int)
    assert caps == capability_mask() & ~(1 << CAPABILITIES["SYS_CHROOT"]) & ~(
        1 << CAPABILITIES["MKNOD"])
    assert child_payload(SandboxSpec(rootfs="/r", argv=("true",), env=(), cwd="/")
                         )["isolation"] == "namespaces"


@pytest.mark.parametrize("change", [
    {"mounts": (Mount("tmpfs", "", "/t"),)}, {"etc_dir": "/etc-dir"}, {"network": "none"},
    {"network": "private", "netns": "/run/netns/x"}, {"isolation": "rootless"},
])
def test_what_a_chroot_sandbox_cannot_do_is_refused(change: dict[str, object]) -> None:
    fields: dict[str, object] = {"rootfs": "/r", "argv": ("true",), "env": (), "cwd": "/",
                                 "isolation": "chroot", **change}
    with pytest.raises(ValueError):
        SandboxSpec(**fields)  # type: ignore[arg-type]
