"""stepbuild from Python: build, push and pull in this process (docs/api.md).

    from stepbuild import api

    result = api.build(api.BuildRequest("app", tags=("registry.example/app:1",), push=True),
                       on_event=print)
    print(result.digest, [(s.step, s.status) for s in result.steps])

`build` returns a `BuildResult` (digests, per-step records, cache hits, warnings) and hands
every `Event` of the build to `on_event`; `push`, `pull` and `images` return small records
too. Nothing here prints to stdout or installs signal handlers; errors are raised as
`StepbuildError`s. A build needs the privileges the `stepbuild` command needs, and moves the
calling thread into a mount namespace of its own (docs/api.md, "Threads and namespaces").

Importing this package is cheap: the builder is imported by the first build.
"""

from stepbuild.api.build import BuildResult, build, run_build
from stepbuild.api.registry import ImageInfo, PullResult, PushResult, images, pull, push
from stepbuild.api.request import BuildRequest, default_connection, store_root
from stepbuild.api.steps import StepRecord
from stepbuild.distribution.connection import Connection
from stepbuild.errors import StepbuildError, StepFailed
from stepbuild.progress.events import Event

__all__ = ["BuildRequest", "BuildResult", "Connection", "Event", "ImageInfo", "PullResult",
           "PushResult", "StepFailed", "StepRecord", "StepbuildError", "build",
           "default_connection", "images", "pull", "push", "run_build", "store_root"]
