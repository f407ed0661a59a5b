"""RUN --mount: from the typed `instructions.Mount` values to what a step's sandbox mounts.

Two halves, as for every cached step:

- `plan` (pure but for reading the context and the store's image list): expands and checks
  each mount and returns `PlannedMount`s whose `key` is the step's cache key's part.
- `realise` (privileged, per run): stages every planned mount's source for one step and
  yields the `sandbox.spec.Mount`s and extra environment for the `SandboxSpec`; undone on
  exit. It draws on `cache` (cache-mount dirs in the store, their locks and instances),
  `context_copies` (the build's copies of the context files that binds show), `secrets`
  (--secret/--ssh options, secret files and environment), `agent` (the ssh agent
  forwarder) and `stubs` (mount points made in the image and removed after). The mounts
  the builder makes for this are `sandbox.host`'s.

No module-level state: what lives as long as a build (the context copies, the team cache
that observes cache mounts) is owned by the build and passed in.

BuildKit semantics, read from dockerfile2llb (convert_runmount.go, convert_secrets.go,
convert_ssh.go) and llb (exec.go):

- `type=cache`: a directory kept in the store (`<store>/cache-mounts/<hash>/`), shared by
  every build of this store; `id` defaults to the target. Its identity is the id, plus the
  `from` state and `source` when seeded from one, plus uid/gid/mode when given (BuildKit
  keys the cache ref on the id and its parent state, and uid/gid/mode make a new parent
  state). `sharing=shared` (default): concurrent users share it; `locked`: an exclusive
  flock, a second user waits; `private`: a user that finds the cache busy gets another
  instance (`data.1`, `data.2`, ... kept for later private users). Without `from`, `source`
  is a sub-directory of the cache to mount. With `from`, a *new* cache starts as a copy of
  the `source` directory of that stage or image (BuildKit mounts `source` of a cache seeded
  with the whole state; copying only `source` is what the step can see of it).
- `type=bind`: `source` (default the root) of the build context, or of `from=` a stage or
  image; read-only unless `rw`, and then writes go to a throwaway overlay upper dir. The
  context's files are copied for the mount as the context selection saw them (ignore files
  applied, owner 0:0 as BuildKit's context transfer gives them).
- `type=secret`: `id` defaults to the basename of `target`, `target` to
  `/run/secrets/<id>` unless `env=` is given alone; mode 0400, uid 0, gid 0 by default. The
  value comes from `--secret id=..,src=FILE|env=VAR` and lives only in a tmpfs mounted for
  the step (and in the step's environment for `env=`). Missing and `required` is an error;
  missing and optional mounts nothing.
- `type=ssh`: `id` "default", target `/run/buildkit/ssh_agent.N` (N counts the step's ssh
  mounts), mode 0600; SSH_AUTH_SOCK points at the first one unless the step's ENV sets it.
  The step gets its own socket, served by a forwarder to the `--ssh` socket (so uid/gid/mode
  apply without touching the user's agent socket).
- `type=tmpfs`: `size` in bytes; nosuid.
"""
