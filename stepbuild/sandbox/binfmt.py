"""Foreign-platform steps: QEMU user emulation, registered in binfmt_misc on demand.

A RUN step of a linux/arm64 image on an amd64 machine execs arm64 programs. The kernel runs
them through binfmt_misc: an entry (magic bytes → interpreter) sends the exec to Debian's
`qemu-aarch64-static`, whose registration line `qemu-user-static` ships in
/usr/lib/binfmt.d/qemu-aarch64.conf. That entry needs the F (fix-binary) flag: F makes the
kernel open the interpreter when the entry is registered, in the registering process's mount
namespace; without it the kernel looks the interpreter up at each exec, inside the step's
root (pivot_root/chroot), which has no qemu, and the exec fails with a misleading ENOENT.

binfmt_misc's table belongs to a user namespace (kernel ≥ 6.7; before, there was one, the
host's). Mounting binfmt_misc makes the table of the mounting process's user namespace if it
has none, and execs in a user namespace use the nearest table up the chain. So:

- root with CAP_SYS_ADMIN in the host's user namespace (`--isolation=namespaces`) opens the
  host's table and registers there; docs/security.md says what that means for the host.
- in a user namespace (rootless, `--isolation=userns`), the builder opens its namespace's own
  table (made by that first mount) and registers there: the host's is never touched, and every
  sandbox child, forked inside that namespace, sees it.
- without CAP_SYS_ADMIN (`--isolation=chroot` in a container) no table can be opened: an
  entry with F in the table at /proc/sys/fs/binfmt_misc is used if there is one; otherwise
  one line names the fix.

The table is opened as a detached mount (fsopen/fsmount: no mount point, nothing to see in
any mount namespace) that is kept open for the life of the process: a binfmt_misc table lives
as long as some mount of it, so what we register goes when the builder exits, unless the
host itself has binfmt_misc mounted (then the entry stays: the table is the host's). An
entry already there without F is never changed behind the host's back: that is refused, with
the command that removes it.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from stepbuild.errors import EmulationUnavailable
from stepbuild.oci.platform import Platform

__all__ = ["CONF_DIR", "CONF_DIR_ENV", "Emulation", "Entry", "Registration", "Table",
           "ensure_emulation", "plan", "qemu_name"]

CONF_DIR = "/usr/lib/binfmt.d"  # where Debian's qemu-user-static puts its registration lines
CONF_DIR_ENV = "STEPBUILD_BINFMT_DIR"  # another directory of them (tests point it elsewhere)
PROC_TABLE = "/proc/sys/fs/binfmt_misc"
INSTALL_HINT = "apt-get install qemu-user-static"

# OCI architecture → QEMU's name for it (qemu-<name>, /usr/lib/binfmt.d/qemu-<name>.conf).
QEMU_ARCHES = {"amd64": "x86_64", "386": "i386", "arm64": "aarch64", "arm": "arm",
               "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64",
               "mips64le": "mips64el", "mips64": "mips64", "mipsle": "mipsel", "mips": "mips",
               "loong64": "loongarch64"}

REGISTER, READY = "register", "ready"


def qemu_name(architecture: str) -> str | None:
    """`qemu-aarch64` for arm64: the name of QEMU's binfmt_misc entry and .conf file."""
    arch = QEMU_ARCHES.get(architecture)
    return f"qemu-{arch}" if arch else None


@dataclass(frozen=True, slots=True)
class Registration:
    """A binfmt_misc registration line, `:name:type:offset:magic:mask:interpreter:flags`
    (kernel Documentation/admin-guide/binfmt-misc.rst): its first character is the separator.
    Magic and mask stay as written (`\\x7f` escapes), which is what `register` takes."""

    name: str
    kind: str
    offset: str
    magic: str
    mask: str
    interpreter: str
    flags: str

    @classmethod
    def parse(cls, line: str) -> Registration | None:
        line = line.strip()
        if len(line) < 2:
            return None
        fields = line[1:].split(line[0])
        if len(fields) == 6:
            fields.append("")  # no flags
        if len(fields) != 7 or not fields[0] or fields[1] not in ("M", "E") or not fields[5]:
            return None
        return cls(*fields)

    def with_fix_binary(self) -> Registration:
        """The same line with F among its flags."""
        return self if "F" in self.flags else replace(self, flags=self.flags + "F")

    def line(self) -> str:
        return ":" + ":".join((self.name, self.kind, self.offset, self.magic, self.mask,
                               self.interpreter, self.flags))


def read_registration(conf_dir: Path, name: str) -> Registration | None:
    """The first registration line of `conf_dir/<name>.conf` (comments skipped), or None."""
    try:
        text = (conf_dir / f"{name}.conf").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for raw in text.splitlines():
        if raw.strip() and not raw.lstrip().startswith(("#", ";")):
            return Registration.parse(raw)
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    """A registered entry, as its file in the table reads: `enabled`, `interpreter X`,
    `flags: POF`, ..."""

    name: str
    enabled: bool
    interpreter: str
    flags: str

    @classmethod
    def parse(cls, name: str, text: str) -> Entry:
        lines = text.splitlines()
        enabled = bool(lines) and lines[0].strip() == "enabled"
        interpreter = flags = ""
        for line in lines[1:]:
            if line.startswith("interpreter "):
                interpreter = line.removeprefix("interpreter ").strip()
            elif line.startswith("flags:"):
                flags = line.removeprefix("flags:").strip()
        return cls(name, enabled, interpreter, flags)


@dataclass(frozen=True, slots=True)
class TableState:
    """What `plan` needs to know of the table: whether we found one (None: binfmt_misc is
    neither mountable nor mounted here), whether we may register in it, whether it is
    enabled, and the entry of the name asked for."""

    writable: bool
    enabled: bool
    entry: Entry | None


def plan(platform: Platform, name: str, registration: Registration | None,
         table: TableState | None, conf_dir: Path) -> str:
    """READY (an enabled entry with F is there) or REGISTER (ours may be added), else
    EmulationUnavailable naming the fix. Pure: the decision of `Emulation.ensure`."""
    where = str(conf_dir / f"{name}.conf")
    entry = table.entry if table is not None else None
    if entry is not None:
        _check_entry(platform, entry)
    if table is not None and not table.enabled:
        raise _unavailable(platform, "binfmt_misc is disabled",
                           f"enable it: echo 1 > {PROC_TABLE}/status")
    if entry is not None:
        return READY
    if registration is None:
        raise _unavailable(platform, f"no QEMU for {platform.architecture} ({where} is missing"
                           f" or has no registration line)", INSTALL_HINT)
    if table is None or not table.writable:
        seen = ("binfmt_misc is not mounted here" if table is None
                else f"{name} is not registered in binfmt_misc")
        raise _unavailable(
            platform, f"{seen}, and registering it needs CAP_SYS_ADMIN",
            f"register it with the F flag on the host, as root (mount -t binfmt_misc"
            f" binfmt_misc {PROC_TABLE}; update-binfmts --enable {name}) and, in a container,"
            f" show it there (-v {PROC_TABLE}:{PROC_TABLE}:ro); or build where user"
            f" namespaces are allowed (--isolation=userns)")
    return REGISTER


def _check_entry(platform: Platform, entry: Entry) -> None:
    """Refuse an entry we must not use as it is, without changing it: it is the host's."""
    path = f"{PROC_TABLE}/{entry.name}"
    if "F" not in entry.flags:
        raise _unavailable(
            platform, f"binfmt_misc entry {entry.name} has no F (fix-binary) flag, so its"
            f" interpreter {entry.interpreter or '?'} cannot be found inside a step's root",
            f"remove it (update-binfmts --disable {entry.name}, or echo -1 > {path});"
            f" stepbuild then registers it with F")
    if not entry.enabled:
        raise _unavailable(platform, f"binfmt_misc entry {entry.name} is disabled",
                           f"enable it: echo 1 > {path}")


def _unavailable(platform: Platform, why: str, hint: str) -> EmulationUnavailable:
    return EmulationUnavailable(str(platform), why, hint=hint)


class Table:
    """A binfmt_misc table, read through a directory fd: the table of this process's user
    namespace opened as a detached mount (`open_own`, writable), or the one mounted at
    /proc/sys/fs/binfmt_misc (`open_visible`, read only). Kept open as long as the process
    runs: the table's entries live as long as a mount of it does."""

    def __init__(self, dir_fd: int, writable: bool, mount_fd: int | None = None) -> None:
        self.dir_fd = dir_fd
        self.writable = writable
        self._mount_fd = mount_fd  # the detached mount that keeps the table alive

    @classmethod
    def open_own(cls) -> Table | None:
        """The table of this process's user namespace (made by this mount if it had none);
        None where the kernel refuses (no CAP_SYS_ADMIN over our mount namespace, or no
        binfmt_misc, or a kernel < 6.7 in a user namespace)."""
        from stepbuild.sandbox import linux  # noqa: TID251 -- binfmt.py is sandbox/'s own

        try:
            mount_fd = linux.new_fs("binfmt_misc", [])
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.ENODEV, errno.EINVAL):
                return None
            raise
        try:
            dir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mount_fd)
        except BaseException:
            os.close(mount_fd)
            raise
        return cls(dir_fd, True, mount_fd)

    @classmethod
    def open_visible(cls, path: str = PROC_TABLE) -> Table | None:
        """The table mounted at `path`, read only; None if binfmt_misc is not mounted there."""
        try:
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        table = cls(dir_fd, False)
        if table._read("status") is None:  # an empty /proc/sys/fs/binfmt_misc: not mounted
            table.close()
            return None
        return table

    def state(self, name: str) -> TableState:
        text = self._read(name)
        entry = Entry.parse(name, text) if text is not None else None
        return TableState(self.writable, (self._read("status") or "").strip() == "enabled",
                          entry)

    def register(self, registration: Registration) -> None:
        """Write the line to `register`. OSError: ENOENT, the interpreter is missing (F opens
        it now); EEXIST, someone registered the name meanwhile."""
        fd = os.open("register", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            os.write(fd, registration.line().encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.dir_fd)
        if self._mount_fd is not None:
            os.close(self._mount_fd)

    def _read(self, name: str) -> str | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError:
            return None
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            return f.read()


class Emulation:
    """What this process has made sure of: the platforms that run here, and the table it
    opened (kept open: see `Table`). Thread-safe: stages ask from threads of their own, and
    the first asks the kernel while the others wait."""

    def __init__(self, conf_dir: Path | None = None) -> None:
        self._conf_dir = conf_dir
        self._ready: set[Platform] = set()
        self._table: Table | None = None
        self._opened = False
        self._lock = threading.Lock()

    def ensure(self, platform: Platform) -> None:
        """Make sure a process of `platform` can exec here (nothing to do for this machine's
        own): register QEMU's entry, with F, in our user namespace's binfmt_misc table if it
        is not there. EmulationUnavailable with the fix if it cannot be made to."""
        if platform == Platform.host():
            return
        with self._lock:
            if platform not in self._ready:
                self._ensure(platform)
                self._ready.add(platform)

    def _ensure(self, platform: Platform) -> None:
        if platform.os != "linux":
            raise _unavailable(platform, "only linux images run on this machine's kernel",
                               f"build for linux/{Platform.host().architecture} or another"
                               f" linux platform")
        name = qemu_name(platform.architecture)
        if name is None:
            raise _unavailable(platform, f"QEMU has no emulation of {platform.architecture}",
                               "build for a platform QEMU emulates, e.g. linux/arm64")
        conf_dir = self._conf_dir or Path(os.environ.get(CONF_DIR_ENV) or CONF_DIR)
        registration = read_registration(conf_dir, name)
        if registration is not None:
            name = registration.name  # the entry's name is the line's
        table = self._open_table()
        state = table.state(name) if table is not None else None
        if plan(platform, name, registration, state, conf_dir) == READY:
            return
        assert table is not None and registration is not None  # plan said REGISTER
        self._register(platform, table, registration.with_fix_binary(), conf_dir)

    def _open_table(self) -> Table | None:
        if not self._opened:
            self._table = Table.open_own() or Table.open_visible()
            self._opened = True
        return self._table

    def _register(self, platform: Platform, table: Table, registration: Registration,
                  conf_dir: Path) -> None:
        try:
            table.register(registration)
        except OSError as exc:
            if exc.errno == errno.EEXIST:  # registered meanwhile (another builder): look again
                plan(platform, registration.name, registration,
                     table.state(registration.name), conf_dir)
                return
            why = (f"its interpreter {registration.interpreter} is missing"
                   if exc.errno == errno.ENOENT else
                   f"registering {registration.name} failed: {os.strerror(exc.errno or 0)}")
            raise _unavailable(platform, why, f"{INSTALL_HINT} (or reinstall it)") from None


_PROCESS = Emulation()  # one per process: the registration is the process's, as its table


def ensure_emulation(platform: Platform) -> None:
    """`Emulation.ensure` for this process (once per platform)."""
    _PROCESS.ensure(platform)
