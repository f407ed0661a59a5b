"""Exports checked by the tools that read them: skopeo, umoci, podman, GNU tar.

One image is built once per module, with whiteouts (deleted files, a file replaced by a
directory) and opaque directories (directories deleted and made again), and exported by that
same build to every output type. Then:

- skopeo inspects and copies the OCI archive, the OCI layout and the docker archive;
- `umoci unpack` of the layout, the `type=local` dir and the `type=tar` tar all give the tree a
  container of the image sees under `stepbuild run` (paths, modes, owners, link targets,
  hard-link counts, content hashes);
- gzip and zstd exports repeat byte for byte, and the store keeps one compressed blob per
  (layer, compression);
- every JSON document we write passes the OCI schemas;
- podman loads the docker and OCI archives and runs the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from stepbuild.oci.documents import MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST, validate_layout
from tests.integration.builds import Stepbuild, base_image, write_context
from tests.unit.oci.test_documents import Validate, oci_schema, validate  # noqa: F401 - fixtures

pytestmark = pytest.mark.root

STEPFILE = r"""FROM base
RUN mkdir -p /srv/data/sub /opt/keep /var/lib/app && echo x > /srv/data/x \
 && echo z > /srv/data/sub/z && echo gone > /gone && ln -s /srv/data/x /abs \
 && ln /srv/data/x /srv/data/hard && echo k > /opt/keep/k && chmod 640 /opt/keep/k \
 && chown 1000:1000 /opt/keep/k && echo conf > /var/lib/app/conf
ENV GREETING=hello
RUN rm /gone /bin/vi && rm -rf /srv/data && mkdir /srv/data && echo new > /srv/data/n \
 && chmod 4755 /srv/data/n && ln /srv/data/n /srv/data/n2 && mkfifo /fifo \
 && rm /opt/keep/k && mkdir /opt/keep/k && echo inner > /opt/keep/k/inner \
 && rm -rf /var/lib/app && mkdir -p /var/lib/app && echo again > /var/lib/app/again
CMD ["cat", "/srv/data/n"]
"""
LAYERS = 3  # the busybox base and two RUNs
# Mount points of `stepbuild run` (proc, sysfs, a tmpfs /dev, bind-mounted /etc files): what a
# container sees there is not the image's.
NOT_THE_IMAGE = ("./proc", "./sys", "./dev", "./etc/hosts", "./etc/resolv.conf",
                 "./etc/hostname")
# One line per entry: path | raw mode | uid | gid | links | name or 'name' -> 'target'.
TREE_SCRIPT = (
    "cd / && find . -xdev -mindepth 1 \\( "
    + " -o ".join(f"-path {p}" for p in NOT_THE_IMAGE)
    + ' \\) -prune -o -exec stat -c "%n|%f|%u|%g|%h|%N" {} + && echo ===== && '
    "find . -xdev -mindepth 1 \\( -path ./proc -o -path ./sys -o -path ./dev \\) -prune "
    "-o -type f -exec sha256sum {} +"
)

Tree = dict[str, tuple[str, ...]]


@dataclass
class Built:
    sb: Stepbuild
    work: Path
    out: Path
    digest: str
    stderr: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("export")
    sb = Stepbuild(work / "store")
    base_image(sb, work)
    context = write_context(work / "context", STEPFILE)
    out = work / "out"
    out.mkdir()
    result = sb.build(context, "-t", "app:1.0",
                      "-o", f"type=oci,dest={out}/app.tar",
                      "-o", f"type=oci-layout,dest={out}/layout",
                      "-o", f"type=docker,dest={out}/docker.tar",
                      "-o", f"type=local,dest={out}/rootfs",
                      "-o", f"type=tar,dest={out}/rootfs.tar")
    return Built(sb, work, out, result.stdout.split()[-1], result.stderr)


@pytest.fixture(scope="module")
def run_tree(built: Built) -> Tree:
    """The tree a container of the image sees."""
    return _parse_run_tree(built.sb.run("app:1.0", "sh", "-c", TREE_SCRIPT))


def _parse_run_tree(text: str) -> Tree:
    listing, hashes = text.split("=====\n")
    sums = {}
    for line in hashes.splitlines():
        digest, path = line.split(None, 1)
        sums[path] = digest
    tree: Tree = {}
    for line in listing.splitlines():
        path, mode, uid, gid, links, name = line.split("|", 5)
        kind = stat.S_IFMT(int(mode, 16))
        target = name.split(" -> ", 1)[1].strip("'") if kind == stat.S_IFLNK else ""
        links = "" if kind == stat.S_IFDIR else links  # overlay counts dir links its own way
        tree[path] = (mode, uid, gid, links, target, sums.get(path, ""))
    return tree


def host_tree(root: Path) -> Tree:
    """The same description as `TREE_SCRIPT` prints, of a directory on the host."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = "./" + str(path.relative_to(root))
            if rel in NOT_THE_IMAGE or rel.startswith(tuple(p + "/" for p in NOT_THE_IMAGE)):
                continue
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            target = os.readlink(path) if kind == stat.S_IFLNK else ""
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == stat.S_IFREG else ""
            links = "" if kind == stat.S_IFDIR else str(st.st_nlink)
            tree[rel] = (f"{st.st_mode:x}", str(st.st_uid), str(st.st_gid), links, target,
                         digest)
    return tree


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


def skopeo_inspect(transport: str) -> dict[str, object]:
    return json.loads(run("skopeo", "inspect", transport).stdout)  # type: ignore[no-any-return]


# --- the build writes every output -------------------------------------------------------------


def test_one_build_writes_every_output(built: Built) -> None:
    for name in ("app.tar", "layout/index.json", "docker.tar", "rootfs/bin/busybox",
                 "rootfs.tar"):
        assert (built.out / name).exists(), name
    for kind in ("oci", "oci-layout", "docker", "local", "tar"):
        assert f"\n{kind} {built.out}" in "\n" + built.stderr
    # nothing left beside the outputs, and the store is sound
    assert sorted(os.listdir(built.out)) == ["app.tar", "docker.tar", "layout", "rootfs",
                                             "rootfs.tar"]
    assert built.sb("check").returncode == 0


# --- skopeo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["oci-archive:{out}/app.tar", "oci:{out}/layout:app:1.0",
                                       "docker-archive:{out}/docker.tar"])
def test_skopeo_inspects_and_copies(built: Built, transport: str, tmp_path: Path) -> None:
    source = transport.format(out=built.out)
    info = skopeo_inspect(source)
    assert len(info["Layers"]) == LAYERS  # type: ignore[arg-type]
    assert "GREETING=hello" in info["Env"]  # type: ignore[operator]
    run("skopeo", "copy", "-q", source, f"oci:{tmp_path}/copy:x")
    copied = skopeo_inspect(f"oci:{tmp_path}/copy:x")
    assert len(copied["Layers"]) == LAYERS  # type: ignore[arg-type]
    assert copied["Env"] == info["Env"]
    assert validate_layout(tmp_path / "copy") == []


def test_the_layout_names_the_image_as_tagged(built: Built) -> None:
    index = json.loads((built.out / "layout" / "index.json").read_bytes())
    (entry,) = index["manifests"]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "app:1.0"}
    assert entry["platform"]["os"] == "linux"
    manifest = json.loads((built.out / "layout" / "blobs" / "sha256" /
                           entry["digest"].split(":")[1]).read_bytes())
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"] * LAYERS
    # the config is the store's, unchanged: its diff_ids name the uncompressed layers
    stored = json.loads(built.sb("inspect", "app:1.0").stdout)
    assert manifest["config"]["digest"] == stored["manifest"]["config"]["digest"]
    assert validate_layout(built.out / "layout") == []


# --- the trees ---------------------------------------------------------------------------------


def test_the_run_tree_shows_the_whiteouts(run_tree: Tree) -> None:
    """Sanity of the reference: deletions, opaque dirs, a file replaced by a dir."""
    for gone in ("./gone", "./bin/vi", "./srv/data/x", "./srv/data/sub", "./var/lib/app/conf"):
        assert gone not in run_tree
    assert run_tree["./srv/data/n"][0] == "89ed"  # setuid 4755
    assert run_tree["./srv/data/n"][3] == "2"  # n and n2
    assert run_tree["./opt/keep/k"][0] == "41ed"
    assert "./opt/keep/k/inner" in run_tree and "./var/lib/app/again" in run_tree
    assert run_tree["./abs"][4] == "/srv/data/x"


def test_umoci_unpack_gives_the_tree_stepbuild_run_sees(built: Built, run_tree: Tree,
                                                        tmp_path: Path) -> None:
    run("umoci", "unpack", "--image", f"{built.out}/layout:app:1.0", tmp_path / "bundle")
    assert host_tree(tmp_path / "bundle" / "rootfs") == run_tree


def test_local_output_is_that_tree(built: Built, run_tree: Tree) -> None:
    assert host_tree(built.out / "rootfs") == run_tree


def test_tar_output_is_that_tree(built: Built, run_tree: Tree, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    run("tar", "-xpf", built.out / "rootfs.tar", "-C", tmp_path / "x", "--numeric-owner")
    assert host_tree(tmp_path / "x") == run_tree
    with tarfile.open(built.out / "rootfs.tar") as tar:  # headers only: sorted, numeric ids
        names = tar.getnames()
        assert names == sorted(names, key=lambda n: n.split("/"))
        assert all(m.uname == "" and m.gname == "" for m in tar.getmembers())


# --- reproducible bytes, one compressed blob per layer -------------------------------------------


def _files(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_exports_repeat_byte_for_byte(built: Built, compression: str, tmp_path: Path) -> None:
    store = built.sb.root
    outputs = ("oci,dest={d}/a.tar", "oci-layout,dest={d}/layout", "docker,dest={d}/d.tar",
               "tar,dest={d}/r.tar")
    results = []
    for attempt in ("one", "two"):
        d = tmp_path / attempt
        d.mkdir()
        args = [arg for o in outputs for arg in ("-o", "type=" + o.format(d=d))]
        printed = built.sb("export", "app:1.0", "--compression", compression, *args).stdout
        blobs = sorted(os.listdir(store / "blobs" / "sha256"))
        results.append((printed.replace(str(d), ""), blobs,
                        {name: _files(d / name) for name in os.listdir(d)}))
    assert results[0] == results[1]
    records = [n for n in os.listdir(store / "compressed") if n.endswith(f".{compression}.json")]
    assert len(records) == LAYERS
    if compression == "gzip":  # the build's own export made them: same digest as then
        index = json.loads((built.out / "layout" / "index.json").read_bytes())
        assert index["manifests"][0]["digest"] in results[0][0]


def test_zstd_layers_decompress_to_their_diff_ids(built: Built, tmp_path: Path) -> None:
    built.sb("export", "app:1.0", "-o", f"type=oci-layout,dest={tmp_path}/z,compression=zstd")
    blobs = tmp_path / "z" / "blobs" / "sha256"
    index = json.loads((tmp_path / "z" / "index.json").read_bytes())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        data = zstandard.ZstdDecompressor().decompress((blobs / layer["digest"][7:]).read_bytes())
        assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id
    run("skopeo", "copy", "-q", f"oci:{tmp_path}/z:app:1.0", f"oci:{tmp_path}/copy:x")


def test_uncompressed_export_is_the_store_manifest(built: Built, tmp_path: Path) -> None:
    printed = built.sb("export", "app:1.0", "--compression", "none",
                       "-o", f"type=oci-layout,dest={tmp_path}/n").stdout
    assert printed.split()[-1] == built.digest
    run("umoci", "unpack", "--image", f"{tmp_path}/n:app:1.0", tmp_path / "bundle")


# --- JSON against the OCI schemas ----------------------------------------------------------------


def test_every_document_passes_the_oci_schemas(built: Built,
                                                validate: Validate) -> None:  # noqa: F811
    layout = built.out / "layout"
    blobs = layout / "blobs" / "sha256"
    documents = [(json.loads((layout / "oci-layout").read_bytes()),
                  "application/vnd.oci.layout.header.v1+json")]
    with tarfile.open(built.out / "app.tar") as tar:
        for name in ("index.json", "oci-layout"):
            member = tar.extractfile(name)
            assert member is not None
            assert member.read() == (layout / name).read_bytes()
    index = json.loads((layout / "index.json").read_bytes())
    documents.append((index, "application/vnd.oci.image.index.v1+json"))
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    documents.append((manifest, MEDIA_TYPE_MANIFEST))
    documents.append((json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes()),
                      MEDIA_TYPE_CONFIG))
    with tarfile.open(built.out / "docker.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.loads(member.read())
        assert entry["RepoTags"] == ["app:1.0"]
        config = tar.extractfile(entry["Config"])
        assert config is not None
        documents.append((json.loads(config.read()), MEDIA_TYPE_CONFIG))
    for document, media_type in documents:
        assert validate(document, media_type) == [], media_type


# --- destinations --------------------------------------------------------------------------------


def test_local_replaces_a_previous_export_only(built: Built, run_tree: Tree,
                                              tmp_path: Path) -> None:
    dest = built.out / "rootfs"
    built.sb("export", "app:1.0", "-o", f"type=local,dest={dest}")
    assert host_tree(dest) == run_tree
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep").write_text("sentinel")
    for command in (["export", "app:1.0"], ["build", str(built.work / "context")]):
        result = built.sb(*command, "-o", f"type=local,dest={foreign}", check=False)
        assert result.returncode == 2, result.stderr
        assert "not a previous stepbuild export" in result.stderr
    assert os.listdir(foreign) == ["keep"]
    result = built.sb("export", "app:1.0", "-o", f"type=docker,dest={foreign}", check=False)
    assert result.returncode == 2 and "is a directory" in result.stderr
    assert [n for n in os.listdir(built.out) if n.startswith(".")] == []


def test_oci_layout_is_added_to(built: Built, tmp_path: Path) -> None:
    shutil.copytree(built.out / "layout", tmp_path / "layout")
    built.sb("export", "base", "-o", f"type=oci-layout,dest={tmp_path}/layout")
    assert skopeo_inspect(f"oci:{tmp_path}/layout:base")["Layers"]
    assert len(skopeo_inspect(f"oci:{tmp_path}/layout:app:1.0")["Layers"]) == LAYERS  # type: ignore[arg-type]
    built.sb("export", "base", "-o", f"type=oci-layout,dest={tmp_path}/layout,name=base")
    index = json.loads((tmp_path / "layout" / "index.json").read_bytes())
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"]
                  for m in index["manifests"]) == ["app:1.0", "base"]
    assert validate_layout(tmp_path / "layout") == []


def test_prune_keeps_what_exports_reuse(built: Built, tmp_path: Path) -> None:
    records = sorted(os.listdir(built.sb.root / "compressed"))
    built.sb("prune", "-f", "--filter", "until=0s")
    assert sorted(os.listdir(built.sb.root / "compressed")) == records
    printed = built.sb("export", "app:1.0", "-o", f"type=oci,dest={tmp_path}/a.tar").stdout
    index = json.loads((built.out / "layout" / "index.json").read_bytes())
    assert printed.split()[-1] == index["manifests"][0]["digest"]
    assert built.sb("check").returncode == 0


# --- podman --------------------------------------------------------------------------------------


def test_podman_loads_and_runs_the_archives(built: Built, tmp_path: Path) -> None:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    assert not missing, f"not installed: {' '.join(missing)} (scripts/setup.sh installs them)"
    runroot = tempfile.mkdtemp(prefix="sb-podman-")  # podman wants it under 50 characters
    podman = ["podman", "--root", str(tmp_path / "root"), "--runroot", runroot,
              "--storage-driver", "overlay", "--events-backend", "file"]
    # This machine's limits: without CAP_SYS_RESOURCE podman's default RLIMIT_NOFILE/NPROC
    # cannot be set (EPERM), so lower ones are asked for; crun refuses the hybrid cgroup v1/v2
    # layout ("cgroups in hybrid mode not supported"), runc accepts it.
    container = ["--runtime", "runc", "run", "--rm", "--network", "none",
                 "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    zstd = tmp_path / "zstd.tar"  # podman checks each decompressed layer against its diff_id
    built.sb("export", "app:1.0", "--compression", "zstd", "-o", f"type=oci,dest={zstd}")
    try:
        for archive in (built.out / "docker.tar", built.out / "app.tar", zstd):
            run(*podman, "rmi", "--all", "--force")
            loaded = run(*podman, "load", "-i", archive).stdout
            assert "Loaded image: localhost/app:1.0" in loaded
            assert run(*podman, *container, "localhost/app:1.0").stdout == "new\n"
        out = run(*podman, *container, "localhost/app:1.0", "sh", "-c",
                  "echo $GREETING; ls /srv/data").stdout
        assert out == "hello\nn\nn2\n"
    finally:
        subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True, check=False,
                       timeout=60)  # unmounts its storage; `system reset` would touch /etc
        shutil.rmtree(runroot, ignore_errors=True)
