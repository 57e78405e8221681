"""The name an artifact is stored under, as Talon builds it (`outputs/helpers/helpers.go`).

`<UTC time as 2006-01-02T15-04-05Z>_` then `<namespace>_<pod>_<name>` when the artifact names both, else
`<hostname>_<name>`, else the values of its other objects (sorted by key, `file` left out) each followed by
`_`, then `<name>`; in the artifact name `/` becomes `_` (`/etc/passwd` → `_etc_passwd`).

Two fixes (docs/compatibility.md): the time is UTC (Talon formats the local time and appends a literal
`Z`, a wrong time on any host not running in UTC), and a `/` in a namespace, pod, hostname or other object
value becomes `_` too, so an alert value never makes a folder or a `..` step in a key or a file name.
"""

from __future__ import annotations

import datetime as dt

from talon_opa.core.errors import StepFailed
from talon_opa.plugins.runtime import Artifact

TIME_FORMAT = "%Y-%m-%dT%H-%M-%SZ"


def _part(value: str) -> str:
    return value.replace("/", "_")


def object_key(artifact: Artifact, now: dt.datetime | None = None) -> str:
    """The object (or file) name of an artifact, Talon's shape."""
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime(TIME_FORMAT)
    objects = artifact.objects
    name = _part(artifact.name)
    namespace, pod, hostname = objects.get("namespace", ""), objects.get("pod", ""), objects.get("hostname", "")
    if namespace and pod:
        middle = f"{_part(namespace)}_{_part(pod)}_"
    elif hostname:
        middle = f"{_part(hostname)}_"
    else:
        middle = "".join(f"{_part(objects[k])}_" for k in sorted(objects) if k != "file")
    return f"{when}_{middle}{name}"


def check_bucket(bucket: str) -> None:
    """A bucket parameter must be a name, not a path or a URL: StepFailed naming it otherwise.

    Checked when the output runs, not when the rules load: Talon loads any string here.
    """
    if (
        not 3 <= len(bucket) <= 222
        or any(c in bucket for c in "/\\?#")
        or any(c.isspace() or ord(c) < 32 for c in bucket)
    ):
        raise StepFailed(
            f"{bucket!r} is not a bucket name",
            hint="write the bucket's name only (3 to 63 lower-case letters, digits, '-' and '.'), no path or URL",
        )


def join_key(prefix: str, key: str) -> str:
    """`<prefix>/<key>`, or the key alone when the prefix is empty (Talon would start the key with '/')."""
    return f"{prefix}/{key}" if prefix else key
