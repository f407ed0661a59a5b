"""sandbox/binfmt.py: Debian's registration lines, the table's entry files, the decision
(register, use, or refuse with the fix) on made-up tables, and the per-process cache over a
table that is a plain directory. The real binfmt_misc (the host's table, a user namespace's
own, a refused entry without F) is tests/integration/test_emulation.py's."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.errors import EmulationUnavailable
from stepbuild.oci.platform import Platform
from stepbuild.sandbox import binfmt
from stepbuild.sandbox.binfmt import (
    READY,
    REGISTER,
    Emulation,
    Entry,
    Registration,
    Table,
    TableState,
    plan,
    qemu_name,
    read_registration,
)

# /usr/lib/binfmt.d/qemu-aarch64.conf as Debian's qemu-user-static ships it
DEBIAN_AARCH64 = (
    r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
    r"\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff"
    r"\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF")
# /proc/sys/fs/binfmt_misc/qemu-aarch64 once that line is registered
TABLE_FILE = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
ARM64 = Platform.of("linux", "arm64")
CONF_DIR = Path("/usr/lib/binfmt.d")


def foreign() -> Platform:
    """A platform that is not this machine's."""
    return ARM64 if Platform.host().architecture != "arm64" else Platform.of("linux", "amd64")


@pytest.mark.parametrize(("architecture", "name"), [
    ("arm64", "qemu-aarch64"), ("arm", "qemu-arm"), ("riscv64", "qemu-riscv64"),
    ("ppc64le", "qemu-ppc64le"), ("s390x", "qemu-s390x"), ("amd64", "qemu-x86_64"),
    ("386", "qemu-i386"), ("mips64le", "qemu-mips64el"), ("loong64", "qemu-loongarch64"),
    ("wasm", None),
])
def test_the_qemu_of_each_architecture(architecture: str, name: str | None) -> None:
    assert qemu_name(architecture) == name


def test_debians_line_parses_and_is_written_back_as_it_was() -> None:
    registration = Registration.parse(DEBIAN_AARCH64 + "\n")
    assert registration is not None
    assert (registration.name, registration.kind, registration.offset) == ("qemu-aarch64",
                                                                           "M", "")
    assert registration.magic.startswith(r"\x7f\x45\x4c\x46")
    assert registration.interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert registration.flags == "OPF"
    assert registration.line() == DEBIAN_AARCH64
    assert registration.with_fix_binary() == registration  # F is there already


def test_f_is_added_to_a_line_without_it() -> None:
    registration = Registration.parse(DEBIAN_AARCH64.removesuffix("OPF") + "OP")
    assert registration is not None
    fixed = registration.with_fix_binary()
    assert fixed.flags == "OPF"
    assert fixed.line() == DEBIAN_AARCH64


def test_a_line_without_flags_and_another_separator() -> None:
    registration = Registration.parse(",demo,E,,py,,/usr/bin/python3")
    assert registration == Registration("demo", "E", "", "py", "", "/usr/bin/python3", "")
    assert registration.with_fix_binary().line() == ":demo:E::py::/usr/bin/python3:F"


@pytest.mark.parametrize("line", ["", ":", ":x:M::magic", ":x:Q::m::/i:F", "::M::m::/i:F",
                                  ":x:M::m:::F", ":x:M::m::/i:F:extra"])
def test_what_is_no_registration_line(line: str) -> None:
    assert Registration.parse(line) is None


def test_the_conf_files_first_line_after_comments(tmp_path: Path) -> None:
    (tmp_path / "qemu-aarch64.conf").write_text(f"# qemu\n\n{DEBIAN_AARCH64}\n:other:E::x::/y:\n")
    found = read_registration(tmp_path, "qemu-aarch64")
    assert found is not None and found.name == "qemu-aarch64"
    assert read_registration(tmp_path, "qemu-riscv64") is None  # no such file


def test_an_entry_file_parses() -> None:
    entry = Entry.parse("qemu-aarch64", TABLE_FILE)
    assert entry == Entry("qemu-aarch64", True, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P",
                          "POF")
    assert not Entry.parse("x", TABLE_FILE.replace("enabled", "disabled", 1)).enabled
    assert Entry.parse("x", "enabled\ninterpreter /i\nflags: \n").flags == ""


REGISTERED = Registration.parse(DEBIAN_AARCH64)
WITH_F = Entry("qemu-aarch64", True, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "POF")


def decide(entry: Entry | None, *, writable: bool = True, enabled: bool = True,
           table: bool = True, registration: Registration | None = REGISTERED) -> str:
    state = TableState(writable, enabled, entry) if table else None
    return plan(ARM64, "qemu-aarch64", registration, state, CONF_DIR)


def refusal(**kwargs: object) -> EmulationUnavailable:
    with pytest.raises(EmulationUnavailable) as caught:
        decide(**kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert error.platform == "linux/arm64"
    assert error.message.startswith("cannot run linux/arm64 steps here: ")
    assert "\n" not in error.message and error.hint and "\n" not in error.hint
    return error


def test_an_enabled_entry_with_f_is_used_as_it_is() -> None:
    assert decide(WITH_F) == READY
    assert decide(WITH_F, writable=False) == READY  # chroot: the host's, read only
    assert decide(WITH_F, registration=None) == READY  # registered without Debian's file


def test_no_entry_in_a_writable_table_is_registered() -> None:
    assert decide(None) == REGISTER


def test_an_entry_without_f_is_refused_with_the_command_that_removes_it() -> None:
    error = refusal(entry=Entry("qemu-aarch64", True, "/usr/bin/qemu-aarch64-static", "OC"))
    assert "qemu-aarch64" in error.why and "F (fix-binary)" in error.why
    assert error.hint is not None
    assert "update-binfmts --disable qemu-aarch64" in error.hint
    assert "echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64" in error.hint


def test_a_disabled_entry_or_table_is_refused_with_how_to_enable_it() -> None:
    entry = refusal(entry=Entry("qemu-aarch64", False, "/i", "F"))
    assert entry.hint == "enable it: echo 1 > /proc/sys/fs/binfmt_misc/qemu-aarch64"
    table = refusal(entry=None, enabled=False)
    assert table.hint == "enable it: echo 1 > /proc/sys/fs/binfmt_misc/status"


def test_no_qemu_names_the_package() -> None:
    error = refusal(entry=None, registration=None)
    assert "/usr/lib/binfmt.d/qemu-aarch64.conf" in error.why
    assert error.hint == "apt-get install qemu-user-static"


def test_a_table_we_may_not_write_names_the_hosts_fix() -> None:
    for kwargs in ({"writable": False}, {"table": False}):
        error = refusal(entry=None, **kwargs)
        assert "CAP_SYS_ADMIN" in error.why
        assert error.hint is not None and "update-binfmts --enable qemu-aarch64" in error.hint


class DirTable(Table):
    """A table over a plain directory: `register` writes its file `register` (and keeps the
    lines written) and makes the entry's file, as the kernel would."""

    def __init__(self, path: Path) -> None:
        super().__init__(os.open(path, os.O_RDONLY | os.O_DIRECTORY), True)
        self.path = path
        self.lines: list[str] = []
        (path / "status").write_text("enabled\n")
        (path / "register").write_text("")

    def register(self, registration: Registration) -> None:
        super().register(registration)  # the real write, to the plain file
        self.lines.append((self.path / "register").read_text())
        (self.path / registration.name).write_text(
            f"enabled\ninterpreter {registration.interpreter}\nflags: {registration.flags}\n")


@pytest.fixture
def table(tmp_path: Path) -> Iterator[DirTable]:
    directory = tmp_path / "table"
    directory.mkdir()
    made = DirTable(directory)
    yield made
    made.close()


def emulation(tmp_path: Path, table: Table, line: str) -> Emulation:
    confs = tmp_path / "confs"
    confs.mkdir(exist_ok=True)
    name = qemu_name(foreign().architecture)
    (confs / f"{name}.conf").write_text(line.replace("qemu-aarch64", str(name)) + "\n")
    made = Emulation(confs)
    made._table, made._opened = table, True
    return made


def test_the_line_is_registered_once_with_f(tmp_path: Path, table: DirTable) -> None:
    made = emulation(tmp_path, table, DEBIAN_AARCH64.removesuffix("OPF") + "OP")
    made.ensure(foreign())
    made.ensure(foreign())
    assert table.lines == [DEBIAN_AARCH64.replace("qemu-aarch64",
                                                  str(qemu_name(foreign().architecture)))]


def test_many_threads_register_once(tmp_path: Path, table: DirTable) -> None:
    made = emulation(tmp_path, table, DEBIAN_AARCH64)
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            made.ensure(foreign())
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(table.lines) == 1 and table.lines[0].endswith(":OPF")


def test_this_machines_platform_needs_nothing(tmp_path: Path) -> None:
    made = Emulation(tmp_path)  # no conf, no table: asking either would fail
    made.ensure(Platform.host())
    assert not made._opened


def test_a_missing_conf_is_the_package_hint_from_ensure(tmp_path: Path,
                                                        table: DirTable) -> None:
    made = Emulation(tmp_path)
    made._table, made._opened = table, True
    with pytest.raises(EmulationUnavailable) as caught:
        made.ensure(foreign())
    assert caught.value.hint == binfmt.INSTALL_HINT


@pytest.mark.parametrize(("platform", "why"), [
    (Platform.of("windows", "amd64"), "only linux images"),
    (Platform.of("linux", "wasm"), "QEMU has no emulation of wasm"),
])
def test_what_qemu_cannot_run_is_one_line(tmp_path: Path, platform: Platform,
                                           why: str) -> None:
    with pytest.raises(EmulationUnavailable) as caught:
        Emulation(tmp_path).ensure(platform)
    assert why in caught.value.why


def test_the_conf_dir_comes_from_the_environment(tmp_path: Path, table: DirTable,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    made = Emulation()
    made._table, made._opened = table, True
    monkeypatch.setenv(binfmt.CONF_DIR_ENV, str(tmp_path))
    with pytest.raises(EmulationUnavailable) as caught:
        made.ensure(foreign())
    assert str(tmp_path) in caught.value.why
