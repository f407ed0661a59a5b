"""The image being built: its layers, its runtime config and its history, as a value.

`ImageState` is what one stage has made so far. Config-only instructions (ENV, LABEL, WORKDIR,
USER, EXPOSE, VOLUME, CMD, ENTRYPOINT, SHELL, STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER)
are applied here as pure functions; RUN/COPY/ADD add a layer through `with_layer`. The config
uses the OCI/Docker JSON field names so that it serialises as it is (`to_oci_json`).
No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from stepbuild.build import keys
from stepbuild.oci.platform import Platform

DEFAULT_SHELL = ("/bin/sh", "-c")
# Docker's default PATH for a Linux image whose config sets none (what BuildKit adds too).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class ImageState:
    """Layers (diff_ids, bottom first), the runtime `config` section, and history entries.

    `created` is the time of the newest history entry; steps served from the cache keep the
    time they were first built, so an unchanged rebuild gives an identical image. `cmd_set`:
    a CMD of the stage being built set Cmd (an ENTRYPOINT then keeps it; a Cmd inherited from
    the base is reset, as Docker does); not part of the image.
    """

    diff_ids: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    created: str = EPOCH
    architecture: str = "amd64"
    os: str = "linux"
    author: str = ""
    cmd_set: bool = False
    variant: str = ""  # as the config writes it: "" for arm64's implied v8 (BuildKit's form)

    @property
    def platform(self) -> Platform:
        return Platform.of(self.os, self.architecture, self.variant)

    @property
    def key(self) -> str:
        """The state's identity for cache keys: content and platform, not history."""
        return keys.state_key(self.diff_ids, self.config, str(self.platform))

    @property
    def env(self) -> tuple[str, ...]:
        return tuple(self.config.get("Env") or ())

    @property
    def shell(self) -> tuple[str, ...]:
        return tuple(self.config.get("Shell") or DEFAULT_SHELL)

    @property
    def workdir(self) -> str:
        return str(self.config.get("WorkingDir") or "/")

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")

    def with_config(self, created_by: str, **changes: Any) -> ImageState:
        """Change config fields (None removes one) and record an empty-layer history entry."""
        config = dict(self.config)
        for name, value in changes.items():
            if value is None:
                config.pop(name, None)
            else:
                config[name] = value
        entry = {"created": self.created, "created_by": created_by, "empty_layer": True}
        return replace(self, config=config, history=(*self.history, entry))

    def with_layer(self, diff_id: str | None, created_by: str, created: str) -> ImageState:
        """Add a step's layer (None: the step changed nothing) with its history entry."""
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if diff_id is None:
            entry["empty_layer"] = True
            return replace(self, history=(*self.history, entry), created=created)
        return replace(self, diff_ids=(*self.diff_ids, diff_id), history=(*self.history, entry),
                       created=created)

    def to_oci_json(self) -> dict[str, Any]:
        """The image config document (OCI image-spec config.md)."""
        document: dict[str, Any] = {"author": self.author} if self.author else {}
        if self.variant:
            document["variant"] = self.variant
        return document | {
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
            "history": list(self.history),
        }

    @classmethod
    def from_oci_json(cls, document: dict[str, Any]) -> ImageState:
        rootfs = document.get("rootfs") or {}
        return cls(
            diff_ids=tuple(rootfs.get("diff_ids") or ()),
            config=dict(document.get("config") or {}),
            history=tuple(document.get("history") or ()),
            created=str(document.get("created") or EPOCH),
            architecture=str(document.get("architecture") or "amd64"),
            os=str(document.get("os") or "linux"),
            author=str(document.get("author") or ""),
            variant=str(document.get("variant") or ""),
        )


def scratch(platform: Platform | None = None) -> ImageState:
    """The empty image FROM scratch starts from, with Docker's default PATH, of `platform`
    (None: this machine's): its config says that platform, as BuildKit's does."""
    return on_platform(ImageState(config={"Env": [DEFAULT_PATH]}), platform or Platform.host())


def on_platform(state: ImageState, platform: Platform) -> ImageState:
    """`state` saying `platform` in its config (architecture, os, variant in BuildKit's form:
    the variant only where it is not the architecture's default)."""
    oci = platform.to_oci()
    return replace(state, architecture=oci["architecture"], os=oci["os"],
                   variant=oci.get("variant", ""))


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with second precision, as image configs write times."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_env(env: tuple[str, ...], pairs: dict[str, str]) -> list[str]:
    """ENV: replace names in place, append new ones (Docker keeps the first position)."""
    result = list(env)
    for key, value in pairs.items():
        index = next((i for i, item in enumerate(result) if item.split("=", 1)[0] == key), None)
        if index is None:
            result.append(f"{key}={value}")
        else:
            result[index] = f"{key}={value}"
    return result


def healthcheck_json(test: tuple[str, ...], interval: int | None, timeout: int | None,
                     start_period: int | None, start_interval: int | None,
                     retries: int | None) -> dict[str, Any]:
    """Docker's Healthcheck config object (durations in nanoseconds, zero fields left out)."""
    check: dict[str, Any] = {"Test": list(test)}
    for name, value in (("Interval", interval), ("Timeout", timeout),
                        ("StartPeriod", start_period), ("StartInterval", start_interval),
                        ("Retries", retries)):
        if value:
            check[name] = value
    return check
