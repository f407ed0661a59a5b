"""docker's resource-limit flags, shared by `build` and `run`: `--memory` ... `--cgroup-parent`.

`add_arguments` declares them; `limits` turns the parsed options into one
`sandbox.limits.Limits` (what every RUN, or the `run` container, gets). A value docker would
refuse is a usage error (exit 2) naming the flag. `sandbox.limits` is imported only when a
flag is used: the parser is built on every start-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from stepbuild.errors import UsageError

if TYPE_CHECKING:
    from stepbuild.sandbox.limits import Limits


def _checked(parser_name: str) -> Callable[[str], object]:
    """An argparse `type` calling `sandbox.limits.<parser_name>`, whose ValueError becomes
    argparse's usage error."""
    def convert(text: str) -> object:
        from stepbuild.sandbox import limits as spec

        try:
            return getattr(spec, parser_name)(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parser_name.removeprefix("parse_")  # argparse names it in errors
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("resource limits of each RUN step (as docker's flags;"
                                      " default: unlimited)")
    size = _checked("parse_size")
    group.add_argument("-m", "--memory", type=size, metavar="BYTES",
                       help="memory limit (e.g. 64m, 1g); over it the OOM killer ends the step")
    group.add_argument("--memory-swap", type=_checked("parse_memory_swap"), metavar="BYTES",
                       help="memory plus swap (-1: unlimited swap; default: twice --memory)")
    group.add_argument("--pids-limit", type=int, metavar="N",
                       help="most processes and threads at once (0 or -1: unlimited)")
    group.add_argument("--cpu-shares", type=int, metavar="N", help="relative CPU weight")
    group.add_argument("--cpu-period", type=int, metavar="USEC",
                       help="the CFS period, in microseconds (default 100000)")
    group.add_argument("--cpu-quota", type=int, metavar="USEC",
                       help="CPU time per period, in microseconds")
    group.add_argument("--cpuset-cpus", default="", metavar="LIST",
                       help="the CPUs the step may use (e.g. 0-1,3)")
    group.add_argument("--ulimit", action="append", default=[], type=_checked("parse_ulimit"),
                       metavar="NAME=SOFT[:HARD]", help="a ulimit, e.g. nofile=1024:2048"
                       " (repeatable)")
    group.add_argument("--shm-size", type=size, metavar="BYTES",
                       help="size of /dev/shm (default: 64m)")
    group.add_argument("--add-host", action="append", default=[],
                       type=_checked("parse_add_host"), metavar="NAME:IP",
                       help="add a line to /etc/hosts (repeatable)")
    group.add_argument("--cgroup-parent", default="", metavar="PATH",
                       help="the cgroup to create each step's cgroup under (default: the"
                            " builder's own)")


def limits(options: argparse.Namespace) -> Limits:
    """The Limits the options ask for; UsageError (exit 2) when they contradict each other
    (--memory-swap below --memory, ...)."""
    from stepbuild.sandbox import limits as spec

    pids = options.pids_limit
    shm_size = spec.DEFAULT_SHM_SIZE if options.shm_size is None else options.shm_size
    try:
        return spec.Limits(
            memory=options.memory, memory_swap=options.memory_swap,
            pids=None if pids is None or pids in (0, -1) else pids,
            cpu_shares=options.cpu_shares, cpu_quota=options.cpu_quota,
            cpu_period=options.cpu_period, cpuset_cpus=options.cpuset_cpus,
            ulimits=tuple(options.ulimit), shm_size=shm_size,
            add_hosts=tuple(options.add_host), cgroup_parent=options.cgroup_parent)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
