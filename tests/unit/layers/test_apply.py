"""apply: an OCI layer tar → an overlay-native layer dir (whiteouts, opaque dirs), safely.

Every case of the bad-tar corpus (tests/badtars.py, docs/security.md families A-E) is applied into
a fresh target beside a sentinel dir: contained cases land where their check says, refused
ones raise LayerError naming the layer and the entry; either way the sentinel, the host's
/etc and our descriptors are untouched and nothing appears beside the target. Then: directories
the tar needs but does not list take their attributes from the lower layers; capture → apply
gives back the upper dir; a property test mixes whiteouts, links and names at random.
Whiteout devices, trusted.* xattrs and chown need root: skipped with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stepbuild.errors import LayerError
from stepbuild.fs.trees import UNLIMITED, remove_tree, walk_tree
from stepbuild.layers.apply import apply_layer, commit_applied
from stepbuild.layers.capture import capture
from stepbuild.layers.tar import DIRTYPE, FIFOTYPE, LNKTYPE, SYMTYPE
from stepbuild.store.store import Store
from tests.badtars import (
    OPAQUE,
    case_names,
    corpus,
    ent,
    is_opaque,
    is_whiteout,
    reg,
    tar,
    write_corpus,
)
from tests.deeptrees import fast_tmp_dir
from tests.hostwatch import etc_state, leaked_under, open_descriptors

pytestmark = pytest.mark.root  # whiteout devices, trusted.* xattrs, chown

LABEL = "layer sha256:" + "ab" * 32


def tree(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything a layer dir can carry, per path (but atime/ctime)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            s = p.lstat()
            if stat.S_ISREG(s.st_mode):
                extra: object = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(s.st_mode):
                extra = os.readlink(p)
            else:
                extra = s.st_rdev
            if stat.S_ISCHR(s.st_mode) and s.st_rdev == 0:
                out[str(p.relative_to(top))] = ("whiteout",)  # only its name matters
                continue
            xattrs = {} if stat.S_ISLNK(s.st_mode) else {
                k: os.getxattr(p, k) for k in os.listxattr(p)}
            out[str(p.relative_to(top))] = (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns,
                                            extra, sorted(xattrs.items()))
    return out


class Beside:
    """base/target (the layer dir being made) and base/sentinel beside it, watched."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.target = base / "target"
        self.target.mkdir(mode=0o700)
        self.sentinel = base / "sentinel"
        if not self.sentinel.exists():
            self.sentinel.mkdir()
            (self.sentinel / "file").write_text("host")
        self._before = (tree(self.sentinel), etc_state(), sorted(os.listdir(base)))
        self._fds = open_descriptors()

    def check_untouched(self) -> None:
        assert (tree(self.sentinel), etc_state(), sorted(os.listdir(self.base))) == self._before
        assert not (leaked := leaked_under(self.base, self._fds)), f"descriptors leaked: {leaked}"
        # The target can be walked whatever its depth without leaving it (os.walk recursed:
        # a 16,384-level case ended in RecursionError); walk_tree never follows a symlink.
        walk_tree(os.open(self.target, os.O_RDONLY | os.O_DIRECTORY), UNLIMITED)

    def done(self) -> None:
        remove_tree(self.target)  # some cases leave trees too deep for shutil.rmtree


@pytest.fixture(scope="module")
def corpus_dir(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    with fast_tmp_dir(tmp_path_factory.mktemp("apply")) as base:  # too-deep cases: 16,384 dirs
        (base / "sentinel").mkdir()
        (base / "sentinel" / "file").write_text("host")
        yield base, write_corpus(base / "corpus", base / "sentinel")


@pytest.mark.parametrize("name", case_names())
def test_bad_tar_corpus(corpus_dir: tuple[Path, dict[str, Path]], name: str) -> None:
    base, paths = corpus_dir
    case = next(c for c in corpus(base / "sentinel") if c.name == name)
    where = Beside(base)
    try:
        if case.refused is not None:
            with pytest.raises(LayerError, match=case.refused) as info:
                apply_layer(paths[name], where.target, label=LABEL)
            assert LABEL in str(info.value)
            if case.entry is not None:
                assert case.entry in str(info.value)
        else:
            apply_layer(paths[name], where.target, label=LABEL)
            assert case.check is not None
            case.check(where.target)
        where.check_untouched()
    finally:
        where.done()


def test_corpus_covers_every_family() -> None:
    cases = corpus(Path("/s"))
    assert {c.family for c in cases} == set("ABCDE")
    assert all((c.refused is None) != (c.check is None) for c in cases)
    assert len(cases) >= 50


def test_stream_input_and_root_attributes(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir(mode=0o700)
    apply_layer(io.BytesIO(tar(reg("a", b"x"))), target)
    assert (target / "a").read_bytes() == b"x"
    st_ = target.stat()
    assert (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid) == (0o755, 0, 0)


# --- directories the tar does not list take the lower layer's attributes ---------------------


def make_lower(path: Path) -> None:
    """A lower layer dir: /tmp 1777, /srv/www owned 33:33 with an xattr, /opt hidden by an
    upper whiteout in `upper_lower`, all with old whole-second mtimes."""
    (path / "tmp").mkdir(parents=True)
    os.chmod(path / "tmp", 0o1777)
    (path / "srv" / "www").mkdir(parents=True)
    os.chown(path / "srv" / "www", 33, 33)
    os.chmod(path / "srv" / "www", 0o750)
    os.setxattr(path / "srv" / "www", "user.label", b"web")
    (path / "opt" / "app").mkdir(parents=True)
    os.chmod(path / "opt" / "app", 0o700)
    for p in (path / "tmp", path / "srv" / "www", path / "srv", path / "opt" / "app"):
        os.utime(p, ns=(10**18, 1_000_000_000 * 1000))


def test_implicit_dirs_inherit_from_lowers(tmp_path: Path) -> None:
    bottom, top, target = tmp_path / "bottom", tmp_path / "top", tmp_path / "t"
    make_lower(bottom)
    top.mkdir()
    (top / "opt").mkdir()
    os.mknod(top / "opt" / "app", stat.S_IFCHR, os.makedev(0, 0))  # top deleted /opt/app
    target.mkdir()
    apply_layer(io.BytesIO(tar(reg("tmp/f", b"x"), reg("srv/www/index.html", b"<p>"),
                               ent(DIRTYPE, "srv/", mode=0o711), reg("opt/app/new", b"n"))),
                target, lowers=[top, bottom])
    s = (target / "tmp").stat()
    assert (stat.S_IMODE(s.st_mode), s.st_mtime_ns) == (0o1777, 10**12)
    s = (target / "srv" / "www").stat()
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o750, 33, 33)
    assert os.getxattr(target / "srv" / "www", "user.label") == b"web"
    assert stat.S_IMODE((target / "srv").stat().st_mode) == 0o711  # listed: the tar wins
    # /opt/app is a whiteout in the top lower: nothing to inherit from below it
    assert stat.S_IMODE((target / "opt" / "app").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "opt").stat().st_mode) == 0o755  # lower top: a plain dir


def test_opaque_lower_stops_inheritance(tmp_path: Path) -> None:
    bottom, top, target = tmp_path / "bottom", tmp_path / "top", tmp_path / "t"
    make_lower(bottom)
    (top / "srv").mkdir(parents=True)
    os.setxattr(top / "srv", OPAQUE, b"y")  # top replaced /srv: bottom's www is gone
    target.mkdir()
    apply_layer(io.BytesIO(tar(reg("srv/www/x", b""))), target, lowers=[top, bottom])
    s = (target / "srv" / "www").stat()
    assert (stat.S_IMODE(s.st_mode), s.st_uid) == (0o755, 0)
    assert not is_opaque(target / "srv")  # the lower's opaque xattr is never copied


# --- symlinks on an entry's path -------------------------------------------------------------


@pytest.mark.parametrize(("last", "problem"), [
    (reg("b/a", b"x"), r"'b' -> '\.wh\.a'.*reserves for whiteouts"),
    (ent(DIRTYPE, "b/sub/"), r"'b' -> '\.wh\.a'.*reserves for whiteouts"),
    (reg("b/.wh.x"), "whiteout through the symlink 'b' of its own layer"),
    (reg("b/.wh..wh..opq"), "whiteout through the symlink 'b' of its own layer"),
])
def test_a_path_through_a_symlink_to_a_whiteout_name_is_refused(tmp_path: Path, last: bytes,
                                                                problem: str) -> None:
    """`b -> .wh.a` then `b/…`: following the layer's own link would make a real /.wh.a."""
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(LayerError, match=problem):
        apply_layer(io.BytesIO(tar(ent(SYMTYPE, "b", ".wh.a"), last)), target, label=LABEL)
    assert not (target / ".wh.a").exists()


def test_a_whiteout_through_the_layers_own_symlink_is_refused(tmp_path: Path) -> None:
    """`s -> d`, then `s/.wh.x`: flatten applies whiteouts before entries, so it would not
    follow the link this layer dir follows; before the link, the whiteout is fine."""
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(LayerError, match="whiteout through the symlink 's' of its own layer"):
        apply_layer(io.BytesIO(tar(ent(SYMTYPE, "s", "d"), reg("s/.wh.x"))), target,
                    label=LABEL)
    remove_tree(target)
    target.mkdir()
    apply_layer(io.BytesIO(tar(reg("s/.wh.x"), ent(SYMTYPE, "s", "d"))), target)
    assert os.readlink(target / "s") == "d" and os.listdir(target) == ["s"]


def test_a_whiteout_on_a_later_entrys_path_is_still_in_the_way(tmp_path: Path) -> None:
    """`.wh.a` then `a/x`: this layer's whiteout is not a lower non-directory to hide
    behind a plain directory (that would undo the whiteout): refused, as it always was."""
    lower, target = tmp_path / "lower", tmp_path / "t"
    (lower / "a").mkdir(parents=True)
    (lower / "a" / "old").write_text("old")
    target.mkdir()
    with pytest.raises(LayerError, match="'a' is not a directory"):
        apply_layer(io.BytesIO(tar(reg(".wh.a"), reg("a/x", b"x"))), target, lowers=[lower],
                    label=LABEL)


def test_a_symlink_to_a_whiteout_name_alone_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    apply_layer(io.BytesIO(tar(ent(SYMTYPE, "b", ".wh.a"), reg("c/d", b"x"))), target)
    assert os.readlink(target / "b") == ".wh.a" and sorted(os.listdir(target)) == ["b", "c"]


def test_a_lower_symlink_on_a_path_is_not_followed(tmp_path: Path) -> None:
    """The layer dir holds `lk/Xfile` under a real `lk/`, whatever `lk` is below: overlay
    shows that directory over the lower symlink (flatten exports the same tree)."""
    lower, target = tmp_path / "lower", tmp_path / "t"
    (lower / "abs" / "path").mkdir(parents=True)
    (lower / "lk").symlink_to("/abs/path")
    target.mkdir()
    apply_layer(io.BytesIO(tar(reg("lk/Xfile", b"x"), ent(SYMTYPE, "own", "abs/path"),
                               reg("own/y", b"y"))), target, lowers=[lower])
    assert (target / "lk").is_dir() and not (target / "lk").is_symlink()
    assert sorted(os.listdir(target)) == ["abs", "lk", "own"]  # own link: followed
    assert (target / "abs" / "path" / "y").read_bytes() == b"y"


# --- capture → apply round trip --------------------------------------------------------------


def test_capture_then_apply_gives_the_upper_back(tmp_path: Path) -> None:
    lower, upper, target = tmp_path / "lower", tmp_path / "upper", tmp_path / "t"
    make_lower(lower)
    (lower / "srv" / "www" / "old.html").write_text("old")
    (lower / "etc").mkdir()
    (lower / "etc" / "gone").write_text("bye")
    (lower / "var" / "cache" / "x").mkdir(parents=True)
    (lower / "var" / "cache" / "x" / "f").write_text("cached")
    # the upper dir as overlay leaves it: copied-up parents, a whiteout, an opaque dir
    upper.mkdir()
    for rel in ("srv", "srv/www", "etc", "var"):
        (upper / rel).mkdir()
        low = (lower / rel).stat()
        os.chown(upper / rel, low.st_uid, low.st_gid)
        os.chmod(upper / rel, stat.S_IMODE(low.st_mode))
        for key in os.listxattr(lower / rel):
            os.setxattr(upper / rel, key, os.getxattr(lower / rel, key))
    (upper / "srv" / "www" / "new.html").write_text("new")
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "var" / "cache").mkdir()
    os.setxattr(upper / "var" / "cache", OPAQUE, b"y")
    (upper / "var" / "cache" / "fresh").write_text("fresh")
    (upper / "bin").mkdir()
    (upper / "bin" / "sh").symlink_to("busybox")
    os.mkfifo(upper / "bin" / "pipe")
    os.link(upper / "srv" / "www" / "new.html", upper / "bin" / "hard")
    for dirpath, dirnames, filenames in os.walk(upper, topdown=False):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, ns=(0, 2_000_000_000_000), follow_symlinks=False)
    for rel in ("srv", "srv/www", "etc", "var"):  # copy-up kept the lower's mtime
        os.utime(upper / rel, ns=(0, (lower / rel).stat().st_mtime_ns))
    blob = capture(upper, [lower], tmp_path / "layer.tar")
    assert blob is not None
    target.mkdir()
    apply_layer(blob.path, target, lowers=[lower])
    assert tree(target) == tree(upper)


# --- property: whatever the entries, nothing lands outside -----------------------------------

PARTS = st.sampled_from(["a", "b", "..", ".", "", "etc", "sentinel", ".wh.a", ".wh..wh..opq",
                         ".wh.b", ".wh..", "x\u00e9"])
NAMES = st.tuples(st.booleans(), st.lists(PARTS, max_size=4), PARTS).map(
    lambda t: ("/" if t[0] else "") + "/".join([*t[1], t[2]]))


@st.composite
def layer_entries(draw: st.DrawFn, sentinel: str) -> list[bytes]:
    targets = st.sampled_from(["/", "..", "../..", sentinel, sentinel + "/file", "../sentinel",
                               "/etc", "a", "a/b", "b/..", ".wh.a"]) | NAMES
    out = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]))
        name = draw(NAMES)
        if kind == "file":
            out.append(reg(name, b"payload"))
        elif kind == "dir":
            out.append(ent(DIRTYPE, name))
        elif kind == "fifo":
            out.append(ent(FIFOTYPE, name))
        else:
            out.append(ent(SYMTYPE if kind == "symlink" else LNKTYPE, name, draw(targets)))
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_property_nothing_escapes(tmp_path: Path, data: st.DataObject) -> None:
    where = Beside(Path(tempfile.mkdtemp(dir=tmp_path)))
    entries = data.draw(layer_entries(str(where.sentinel)))
    try:
        apply_layer(io.BytesIO(tar(*entries)), where.target, label=LABEL)
        event("applied")
    except LayerError as exc:
        assert LABEL in str(exc)
        event(f"refused: {str(exc).rsplit(': ', 1)[-1][:30]}")
    where.check_untouched()
    for dirpath, dirnames, filenames in os.walk(where.target):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            assert not name.startswith(".wh."), path  # markers never stay as files
            if path.is_char_device():
                assert is_whiteout(path)
    where.done()



# --- commit_applied: apply into the store's tmp/, then commit ---------------------------------


def test_commit_applied_commits_the_layer_and_consumes_the_tar(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    data = tar(reg("app/hello", b"hi\n"))
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.tmp_file("test-")
    path.write_bytes(data)
    commit_applied(store, path, diff_id, [], "test layer", "applied-")
    assert store.has_layer(diff_id) and not path.exists()
    assert (store.layer_dir(diff_id) / "app" / "hello").read_bytes() == b"hi\n"
    assert not any(p.name.startswith("applied-") for p in (store.root / "tmp").iterdir())


def test_commit_applied_removes_what_a_failed_apply_left(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    data = tar(reg("a", b"x"), reg("a/b", b"y"))  # `a` is a file: a/b cannot be made
    path = store.tmp_file("test-")
    path.write_bytes(data)
    with pytest.raises(LayerError):
        commit_applied(store, path, "sha256:" + hashlib.sha256(data).hexdigest(), [],
                       "test layer", "applied-")
    assert not any(p.name.startswith("applied-") for p in (store.root / "tmp").iterdir())
    assert path.exists()  # the caller's to remove
