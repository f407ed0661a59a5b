"""What `stepbuild --help`, `stepbuild COMMAND --help` and `--version` say to a user.

Texts only, and the two small hooks that put them on the parser (`decorate`) and add the
`version` command. Kept apart from cli/main.py so that the argument definitions stay
readable there; nothing here is imported by anything but main.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

DESCRIPTION = """\
stepbuild builds container images from a Stepfile (the Dockerfile language: a Dockerfile or
Containerfile works as it is). Every RUN step runs isolated in namespaces over overlayfs; the
result is an OCI image in a local store, which you can run, export, or push to a registry. A
step cache (shared with a team through --cache-to/--cache-from) skips what did not change."""

EPILOG = """\
common commands:
  stepbuild build -t app:1 .                  build ./Stepfile (or Containerfile, Dockerfile)
  stepbuild run app:1 sh -c 'echo hi'         run a command in a throwaway container
  stepbuild push app:1 registry.example/app:1 push an image to a registry
  stepbuild images                            list the images in the store
  stepbuild COMMAND --help                    the options of one command, with examples

the store:
  Images, layers and the step cache live in one directory: --root, else $STEPBUILD_ROOT,
  else /var/lib/stepbuild as root, else $XDG_DATA_HOME/stepbuild (~/.local/share/stepbuild).
  It is an OCI image layout, so skopeo and umoci read it as it is.

exit status:
  0    success
  1    the build, the run or a registry operation failed (a RUN's own failure included)
  2    bad usage: an unknown option, a bad value, a Stepfile that does not parse
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)
  run: the command's own exit status

environment:
  STEPBUILD_ROOT           the store directory (--root wins)
  STEPBUILD_STALL_TIMEOUT  seconds a registry transfer may make no progress (default 60)
  STEPBUILD_PROGRESS       the default of --progress (auto, tty, plain, rawjson, quiet)
  STEPBUILD_HEARTBEAT      seconds of silence before a heartbeat line (default 10)
  SOURCE_DATE_EPOCH        the time of every layer and history entry (reproducible builds)
  REGISTRY_AUTH_FILE       registry credentials (--authfile wins; default
                           $DOCKER_CONFIG/config.json, else ~/.docker/config.json)
  SSH_AUTH_SOCK            the agent of `build --ssh default`
  XDG_DATA_HOME            the store of a normal user (rootless)

shell completion:
  source <(stepbuild completion bash)   (zsh and fish: stepbuild completion --help)"""

EXAMPLES = {
    "build": """\
examples:
  stepbuild build -t app:1 .
  stepbuild build -f build/Containerfile --target test --build-arg VERSION=2 .
  stepbuild build -t registry.example/app:1 --push \\
      --cache-from registry.example/app:cache \\
      --cache-to type=registry,ref=registry.example/app:cache,mode=max,ignore-error=true .
  stepbuild build --no-cache-filter deps -t app:1 .   # stage deps runs again
  stepbuild build --explain -t app:1 .                # say why each step ran
  d=$(stepbuild build -q -t app:1 .)                  # the image digest only""",
    "run": """\
examples:
  stepbuild run app:1
  stepbuild run --network none app:1 sh -c 'id; ls /'
  stepbuild run --platform linux/arm64 multi:1 uname -m   # an index's arm64 image""",
    "push": """\
examples:
  stepbuild push registry.example/app:1
  stepbuild push app:1 localhost:5000/app:1 --tls-verify=false""",
    "pull": """\
examples:
  stepbuild pull busybox
  stepbuild pull registry.example/app@sha256:<digest>
  stepbuild pull --platform linux/arm64 registry.example/app:1
  stepbuild pull --all-platforms registry.example/app:1   # keep the image index""",
    "images": """\
example:
  stepbuild images""",
    "inspect": """\
example:
  stepbuild inspect app:1 | jq .config.config.Env""",
    "history": """\
SIZE is each layer's uncompressed size (0B for an entry without a layer: ENV, CMD...).

examples:
  stepbuild history app:1
  stepbuild history --no-trunc -H=false app:1
  stepbuild history --format json app:1 | jq -r .Size""",
    "why": """\
examples:
  stepbuild build --explain -t app:1 .   # a why: line under each step that ran
  stepbuild why app:1                    # the same, after the fact
  stepbuild why -v                       # the store's last build, every file named""",
    "rmi": """\
example:
  stepbuild rmi app:1 && stepbuild prune -f""",
    "tag": """\
example:
  stepbuild tag app:1 registry.example/app:1""",
    "export": """\
examples:
  stepbuild export app:1 -o type=oci,dest=app.tar
  stepbuild export app:1 -o type=local,dest=rootfs/
  stepbuild export --platform linux/arm64 multi:1 -o type=docker,dest=arm64.tar""",
    "load": """\
examples:
  stepbuild load -i app.tar
  podman save busybox | stepbuild load""",
    "login": """\
example:
  echo "$TOKEN" | stepbuild login -u ci --password-stdin registry.example""",
    "logout": """\
example:
  stepbuild logout registry.example""",
    "prune": """\
examples:
  stepbuild prune                         (asks; records unused for 48h go)
  stepbuild prune -f --keep-storage 5GB   (least recently used first, until under 5GB)
  stepbuild prune --filter until=7d --dry-run
  stepbuild prune -f --all --cache-mounts
Without a terminal to ask, prune needs -f (or --dry-run): a usage error otherwise.""",
    "du": """\
examples:
  stepbuild du
  stepbuild du -v          (apparent sizes too)""",
    "check": """\
examples:
  stepbuild check
  stepbuild check --repair""",
    "parse": """\
examples:
  stepbuild parse .
  stepbuild parse --json -f Containerfile""",
    "version": """\
example:
  stepbuild version""",
}


def version_line() -> str:
    """`stepbuild X.Y.Z`, from the installed package's metadata (the module's own version
    when it runs from a checkout that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("stepbuild")
    except PackageNotFoundError:
        from stepbuild import __version__ as number
    return f"stepbuild {number}"


def top_parser() -> argparse.ArgumentParser:
    """The top-level parser, with the description and epilog above (kept as written)."""
    return argparse.ArgumentParser(prog="stepbuild", description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


class _VersionAction(argparse.Action):
    """argparse's `version` action, but the version is read only when asked for: reading
    package metadata costs more than the rest of building the parser."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


def add_version(parser: argparse.ArgumentParser, commands: Subcommands) -> None:
    """`--version` on the top-level parser and the `version` command."""
    parser.add_argument("--version", action=_VersionAction)
    version = commands.add_parser("version", help="print stepbuild's version")
    version.set_defaults(run=_print_version)


def decorate(commands: Subcommands) -> None:
    """Give each command that has examples its epilog (kept as written)."""
    for name, parser in commands.choices.items():
        if name in EXAMPLES:
            parser.epilog = EXAMPLES[name]
            parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _print_version(options: argparse.Namespace) -> int:
    print(version_line())
    return 0


def add_completion_command(parser: argparse.ArgumentParser, commands: Subcommands) -> None:
    """The `completion` command; it reads `parser` (whole, by then) when it runs. Here, not
    in cli/completion.py, so that only `stepbuild completion` imports the generator."""
    sub = commands.add_parser(
        "completion", help="print a shell completion script (bash, zsh or fish)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="install:\n"
               "  bash: source <(stepbuild completion bash)        (in ~/.bashrc)\n"
               "  zsh:  stepbuild completion zsh > \"${fpath[1]}/_stepbuild\"\n"
               "  fish: stepbuild completion fish > ~/.config/fish/completions/stepbuild.fish")
    sub.add_argument("shell", choices=("bash", "zsh", "fish"))

    def run(options: argparse.Namespace) -> int:
        from stepbuild.cli.completion import script

        sys.stdout.write(script(parser, options.shell))
        return 0

    sub.set_defaults(run=run)
