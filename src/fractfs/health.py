"""Is this node's data being kept? ``status()["healthy"]`` and ``status()["problems"]`` from the rest of status.

A monitor polls ``fractfs status --json`` (which reads the ``status.json`` the runtime persists) or calls
``fractfs.status()``; either way it gets a boolean and a list of ``{"kind", "message"}``, each message naming
what is wrong and what to do. The kinds are stable names a monitor can match on:

- ``volume-missing`` / ``volume-changed``: the Volume is not mounted (or another one is): checkpoints pause,
  nothing is written to the empty mountpoint; they resume by themselves when the same Volume is back.
- ``lease-lost``: this node held the checkpoint lease and another node took it: this node's changes from
  then on are not saved.
- ``lease-unconfirmed``: this node holds the lease but could not renew it lately (store unreachable).
- ``checkpoint-failing``: the last checkpoint(s) failed.
- ``store-error``: the store cannot be reached (seen by the lease heartbeat).
- ``files-not-stored``: files a checkpoint could not store (too large for the store, no space); the rest was
  committed.
- ``restore-incomplete``: the restore at start-up could not write some files.

A standby (another node or another process on this node writes checkpoints) is not a problem by itself.
"""
from __future__ import annotations

from typing import Any, Optional

VOLUME_MISSING = "volume-missing"
VOLUME_CHANGED = "volume-changed"
LEASE_LOST = "lease-lost"
LEASE_UNCONFIRMED = "lease-unconfirmed"
CHECKPOINT_FAILING = "checkpoint-failing"
STORE_ERROR = "store-error"
FILES_NOT_STORED = "files-not-stored"
RESTORE_INCOMPLETE = "restore-incomplete"

#: status keys that list files a checkpoint could not store (filled by the checkpoint side when present).
_NOT_STORED_KEYS = ("not_stored",)


def problem(kind: str, message: str) -> dict[str, str]:
    return {"kind": kind, "message": message}


def _names(value: Any) -> list[str]:
    """File names from a status list whose items are paths or dicts naming one (``path``/``file``)."""
    out: list[str] = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            name = item.get("path") or item.get("file") or item.get("key")
            why = item.get("reason") or item.get("why") or item.get("error")
            out.append(f"{name} ({why})" if why else str(name))
        else:
            out.append(str(item))
    return out


def assess(st: dict[str, Any], *, volume: Optional[tuple[str, str]], lease_lost: Optional[str],
           store_error: Optional[str]) -> list[dict[str, str]]:
    """The problems shown by status ``st`` plus what only the runtime knows: ``volume`` = (kind, message)
    while the Volume check fails, ``lease_lost`` = why this node stopped holding the lease, ``store_error``
    = the lease heartbeat's last error while it fails."""
    found: list[dict[str, str]] = []
    if volume is not None:
        kind, msg = volume
        found.append(problem(kind, f"{msg}. Checkpoints are paused until it is back"))
    lease = st.get("lease") or {}
    if lease_lost is not None and not lease.get("held"):
        found.append(problem(LEASE_LOST, f"this node lost the checkpoint lease ({lease_lost}); its changes are "
                                         "not saved any more. Restart it to restore the current snapshot"))
    elif lease.get("state") == "unconfirmed" and volume is None:
        found.append(problem(LEASE_UNCONFIRMED, "this node holds the checkpoint lease but could not renew it "
                             f"lately ({lease.get('last_error') or 'renewal overdue'}); no commit until it can"))
    if store_error is not None and volume is None:
        found.append(problem(STORE_ERROR, f"the store {st.get('checkpoint_location')} cannot be reached: "
                                          f"{store_error}"))
    failures = int(st.get("consecutive_failures") or 0)
    if failures and volume is None:
        found.append(problem(CHECKPOINT_FAILING, f"the last {failures} checkpoint(s) failed: "
                                                 f"{st.get('last_error')}; the previous snapshot stays the "
                                                 "checkpoint"))
    for key in _NOT_STORED_KEYS:
        names = _names(st.get(key))
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            found.append(problem(FILES_NOT_STORED, f"{len(names)} file(s) could not be stored: {shown}; their "
                                                   "previous version (if any) stays in the snapshot"))
            break
    restore = st.get("restore") or {}
    lost = list(restore.get("errors") or []) + list(restore.get("refused") or [])
    if lost:
        found.append(problem(RESTORE_INCOMPLETE, f"the restore at start-up could not write {len(lost)} "
                                                 f"file(s): {'; '.join(str(x) for x in lost[:3])}"))
    return found
