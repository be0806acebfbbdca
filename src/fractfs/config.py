"""`.fractfs.toml` + environment → a validated, frozen :class:`Config`.

Every error names the file (or environment variable) and the key, and is raised before anything on disk
changes: provisioning only ever sees a Config that passed :func:`load_config`.
"""
from __future__ import annotations

import codecs
import dataclasses
import logging
import os
import posixpath
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import ConfigError, FractfsError
from .patterns import unusable_pattern
from .redact import redact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

log = logging.getLogger("fractfs")

CONFIG_FILENAME = ".fractfs.toml"
#: Upper bound for every "seconds" setting (sync_interval, grace, lease_timeout): one year.
MAX_SECONDS = 366 * 86400
BACKENDS = ("volumes", "local", "s3", "databricks")


@dataclass(frozen=True)
class Config:
    root: Path                       #: absolute app root (holds .fractfs.toml)
    config_file: Optional[Path]      #: the TOML that was read, None when absent
    backend: str                     #: canonical: volumes | local | s3 | databricks
    volume_root: Optional[str]       #: POSIX path or URL of the durable store; None → passthrough
    dirs_root: Optional[Path]        #: POSIX directory [dirs] symlinks point into (== volume_root on mounts)
    #: seconds between background checkpoints; 0 = none at all (no timer, no watch): only sync_now(),
    #: `fractfs sync` and the final checkpoint at SIGTERM/exit, as fractfs 0.1.0 read 0
    sync_interval: float = 300.0
    scratch: Path = Path("/tmp/fractfs")
    checkpoint_subdir: str = "_checkpoint"
    content_hash: bool = False
    auto_ignore_bundle: bool = True
    keep_snapshots: int = 10
    transfers: int = 16
    #: "watch" (checkpoint ~1 s after writes settle; falls back to "interval" where inotify is missing) or
    #: "interval" (every sync_interval). Default chosen by benchmarks/data_loss_window.py: ~0.9 s vs ~interval/2
    #: average loss window, both ~0.15 % idle CPU.
    sync_mode: str = "watch"
    grace: float = 8.0
    lease_timeout: float = 30.0              #: seconds without a heartbeat before another node takes over
    #: S3 PUT/GET through fractfs' lean signed-request client (stores/_s3fast.py) rather than botocore; off
    #: sends everything through s3fs (for an endpoint the lean client cannot talk to)
    s3_fast_path: bool = True
    #: CPU the background checkpoints may use, as a fraction of one core (budget.py); None: unbounded
    cpu_budget: Optional[float] = 0.2
    #: bytes per second the background checkpoints may upload on average; None: unbounded
    upload_budget: Optional[float] = None
    dirs: tuple[str, ...] = ()               #: normalized relative POSIX paths, e.g. "data/blobs"
    local_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()           #: non-fatal findings (unknown keys, ...)
    #: where each scalar came from, e.g. {"sync_interval": "env fractfs_SYNC_INTERVAL"}
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def passthrough(self) -> bool:
        """No durable store configured: no symlinks, no checkpoints."""
        return self.volume_root is None

    @property
    def is_posix_store(self) -> bool:
        return self.backend in ("volumes", "local") and not _is_url(self.volume_root or "")

    @property
    def checkpoint_location(self) -> Optional[str]:
        """Path or URL of the checkpoint area (``<volume_root>/<checkpoint_subdir>``)."""
        if self.volume_root is None:
            return None
        return self.volume_root.rstrip("/") + "/" + self.checkpoint_subdir

    @property
    def state_dir(self) -> Path:
        """Node-local bookkeeping (stat cache, bundle list, staging). Lives in scratch: wiped with the node."""
        return self.scratch / ".fractfs-state"

    def summary(self) -> dict[str, Any]:
        """The settings as JSON-friendly values: the config part of ``status()`` (app and CLI alike)."""
        return {
            "root": str(self.root),
            "config_file": str(self.config_file) if self.config_file else None,
            "backend": self.backend,
            "volume_root": self.volume_root,
            "dirs_root": str(self.dirs_root) if self.dirs_root else None,
            "checkpoint_location": self.checkpoint_location,
            "scratch": str(self.scratch),
            "passthrough": self.passthrough,
            "sync_interval": self.sync_interval,
            "sync_mode": self.sync_mode,
            "grace": self.grace,
            "lease_timeout": self.lease_timeout,
            "content_hash": self.content_hash,
            "auto_ignore_bundle": self.auto_ignore_bundle,
            "keep_snapshots": self.keep_snapshots,
            "cpu_budget": self.cpu_budget,
            "upload_budget": self.upload_budget,
            "patterns": {"local": list(self.local_patterns), "ignore": list(self.ignore_patterns)},
        }

    def replace(self, **changes: object) -> "Config":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _is_url(value: str) -> bool:
    return "://" in value


# ---------------------------------------------------------------------------------------------------------
# Loading

_ENV_PREFIXES = ("fractfs_", "FRACTFS_")
#: canonical backend for every accepted spelling (the seed's names plus later upstream ones)
_BACKEND_ALIASES = {
    "volumes": "volumes", "volume": "volumes", "mount": "volumes", "posix": "volumes",
    "local": "local", "s3": "s3", "fsspec": "s3", "databricks": "databricks",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: scalar settings: TOML key → (kind, env suffixes, TOML aliases)
_SCALARS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "backend": ("str", ("BACKEND",), ()),
    "volume_root": ("str", ("VOLUME_ROOT", "REMOTE_ROOT"), ("remote_root",)),
    "dirs_root": ("str", ("DIRS_ROOT",), ()),
    "sync_interval": ("seconds", ("SYNC_INTERVAL",), ()),
    "scratch": ("str", ("SCRATCH",), ()),
    "checkpoint_subdir": ("str", ("CHECKPOINT_SUBDIR",), ()),
    "content_hash": ("bool", ("CONTENT_HASH",), ()),
    "auto_ignore_bundle": ("bool", ("AUTO_IGNORE_BUNDLE",), ()),
    "keep_snapshots": ("int", ("KEEP_SNAPSHOTS",), ()),
    "transfers": ("int", ("TRANSFERS",), ()),
    "sync_mode": ("str", ("SYNC_MODE",), ()),
    "grace": ("seconds", ("GRACE",), ()),
    "lease_timeout": ("seconds", ("LEASE_TIMEOUT",), ()),
    "s3_fast_path": ("bool", ("S3_FAST_PATH",), ()),
    "cpu_budget": ("fraction", ("CPU_BUDGET",), ()),
    "upload_budget": ("rate", ("UPLOAD_BUDGET",), ()),
}
_TABLES = {"dirs": "paths", "local": "patterns", "ignore": "patterns"}
#: variables that are not settings of their own (the root is where the settings are read from)
_ENV_ONLY = {"ROOT"}


def find_root(start: Optional[Path] = None) -> Path:
    """The directory holding .fractfs.toml at or above ``start`` (default: cwd); ``start`` itself if none."""
    here = (start or Path.cwd()).absolute()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_FILENAME).is_file():
            return candidate
    return here


def _env_lookup(env: Mapping[str, str], suffix: str) -> Optional[tuple[str, str]]:
    """(variable name, value) for ``fractfs_<suffix>``/``FRACTFS_<suffix>``; both set and different → error."""
    found = [(p + suffix, env[p + suffix]) for p in _ENV_PREFIXES if p + suffix in env]
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise ConfigError(
            f"environment variables {found[0][0]}={found[0][1]!r} and {found[1][0]}={found[1][1]!r} disagree; "
            "set only one of them"
        )
    return found[0] if found else None


#: spellings of "no budget" for cpu_budget and upload_budget (0 too)
_OFF = {"off", "none", "unbounded", "unlimited", "false", "no"}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}
_RATE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*(?:/\s*s)?")


def _coerce_budget(kind: str, value: object, where: str) -> float:
    """cpu_budget ("fraction": 0.2, "20%") or upload_budget ("rate": bytes/s, "10MiB", "5 MB/s"); 0 or "off"
    mean unbounded and come back as 0.0."""
    example = "0.2 or \"20%\"" if kind == "fraction" else "\"10MiB\" (per second)"
    if isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r}: expected a number such as {example}, or \"off\"")
    number: float
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _OFF:
            return 0.0
        try:
            if kind == "fraction":
                number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            else:
                m = _RATE.fullmatch(text)
                if m is None or m.group(2) not in _SIZE_UNITS:
                    raise ValueError(text)
                number = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
        except ValueError:
            units = "" if kind == "fraction" else " (units B, KB, MB, GB, KiB, MiB, GiB)"
            raise ConfigError(f"{where} = {value!r}: expected a number such as {example}{units}, or "
                              "\"off\"") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ConfigError(f"{where} = {value!r}: expected a number such as {example}, or \"off\"")
    if number != number or number in (float("inf"), float("-inf")) or number < 0:
        raise ConfigError(f"{where} = {value!r}: expected a positive finite number such as {example}, or 0 / "
                          "\"off\" for no budget")
    return number


def _cores() -> int:
    """Cores this process may run on (its affinity, where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _coerce(kind: str, value: object, where: str) -> object:
    """Check/convert one scalar; ``where`` names the file+key or the env var for the error."""
    if kind in ("fraction", "rate"):
        return _coerce_budget(kind, value, where)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where} = {value!r}: expected true or false")
    if kind in ("int", "seconds"):
        if isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        if isinstance(value, str):
            try:
                value = float(value.strip()) if kind == "seconds" else int(value.strip())
            except ValueError:
                unit = "a number of seconds" if kind == "seconds" else "a whole number"
                raise ConfigError(f"{where} = {value!r}: expected {unit}") from None
        if kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind == "int" and not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected a whole number")
        if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} = {value!r}: expected a finite number")
        if kind == "seconds" and value > MAX_SECONDS:
            # timers, joins and lock waits take these as timeouts: beyond what the OS accepts they raise
            # OverflowError inside the sync thread, which would then die silently
            raise ConfigError(f"{where} = {value!r}: at most {MAX_SECONDS} seconds (a year)")
        return float(value) if kind == "seconds" else value
    if not isinstance(value, str):
        raise ConfigError(f"{where} = {value!r}: expected a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ConfigError(f"{where}: contains a NUL character")
    bad = _control(value)
    if bad is not None:
        # a newline or tab pasted into a path or name is a mistake, and would name a directory or store key
        raise ConfigError(f"{where} = {value!r} contains the control character {bad!r}")
    return value


def _control(value: str) -> str | None:
    for ch in value:
        if ord(ch) < 32 or ord(ch) == 127:
            return ch
    return None


def _check_path_length(path: str, where: str) -> None:
    """Refuse what no filesystem here could create (255-byte names, 4095-byte paths)."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > 4095:
        raise ConfigError(f"{where}: path is too long ({len(raw)} bytes; at most 4095)")
    for part in raw.split(b"/"):
        if len(part) > 255:
            raise ConfigError(f"{where}: path component {part[:40].decode('utf-8', 'replace')!r}... is longer "
                              "than 255 bytes")


def _suggest(key: str, known: Sequence[str]) -> str:
    import difflib  # here: only a mistyped key needs it

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    # Windows editors save UTF-8 with a byte-order mark, which the TOML parser would call an invalid statement
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {skip + exc.start}; save the file as UTF-8") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)  # tomli (Python < 3.11) is untyped
        return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _check_relpath(value: str, where: str) -> str:
    if not value or not value.strip():
        raise ConfigError(f"{where} is empty; give a directory relative to the app root, e.g. 'data/blobs'")
    if "\x00" in value:
        raise ConfigError(f"{where} = {value!r} contains a NUL character")
    bad = _control(value)
    if bad is not None:
        raise ConfigError(f"{where} = {value!r} contains the control character {bad!r}")
    if "\\" in value:
        raise ConfigError(f"{where} = {value!r} contains a backslash; separate directories with '/'")
    if any(part != part.strip() for part in value.split("/")):
        raise ConfigError(f"{where} = {value!r} has a name that starts or ends with whitespace (a typo?); "
                          "remove the spaces")
    if value.startswith("/") or value.startswith("~") or (len(value) > 1 and value[1] == ":"):
        raise ConfigError(f"{where} = {value!r} is absolute; [dirs] paths are relative to the app root")
    norm = posixpath.normpath(value)
    if norm == ".":
        raise ConfigError(f"{where} = {value!r} is the app root itself; name a subdirectory")
    if norm == ".." or norm.startswith("../") or ".." in value.split("/"):
        raise ConfigError(f"{where} = {value!r} escapes the app root ('..'); use a path inside the root")
    for part in norm.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise ConfigError(f"{where}: path component {part[:40]!r}... is longer than 255 bytes")
    if len(norm.encode("utf-8", "surrogateescape")) > 3000:
        raise ConfigError(f"{where}: path is too long ({len(norm)} characters)")
    return norm


def is_within(child: Path, parent: Path) -> bool:
    """``child`` is ``parent`` or below it, compared by path components (``/a/bc`` is not inside ``/a/b``)."""
    return child == parent or parent in child.parents


def real_path(path: Path) -> Path:
    """``path`` with the symlinks that exist followed, the rest kept lexical: to compare locations."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def load_config(root: Optional[Path | str] = None, env: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate the configuration. Raises ConfigError naming the file/variable and key.

    Length (~300 lines): one straight pass, setting by setting, because most checks depend on values settled
    just before them (the backend on the Volume URL, dirs_root on the backend, every nesting rule on all the
    paths), and the order of the checks is the order in which a user meets the errors. Split into helpers it
    would pass a dozen half-validated values around; the sections are marked ``# --``.
    """
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    warnings: list[str] = []

    if root is not None:
        root_path = Path(root).expanduser()
        sources["root"] = "init(root=...)"
    else:
        hit = _env_lookup(env, "ROOT")
        if hit:
            if not hit[1].strip():
                raise ConfigError(f"environment variable {hit[0]} is empty; set it to the app root directory")
            root_path = Path(hit[1]).expanduser()
            sources["root"] = f"env {hit[0]}"
        else:
            root_path = find_root()
            sources["root"] = "current directory"
    root_path = Path(os.path.abspath(root_path))
    if not root_path.is_dir():
        raise ConfigError(f"app root {root_path} ({sources['root']}) is not a directory")

    cfg_file: Optional[Path] = root_path / CONFIG_FILENAME
    assert cfg_file is not None
    data: dict[str, Any] = _read_toml(cfg_file) if cfg_file.is_file() else {}
    if not cfg_file.is_file():
        cfg_file = None
    fname = str(cfg_file) if cfg_file else CONFIG_FILENAME

    # -- unknown keys warn (a typo like [dir] must not pass silently)
    scalar_keys = set(_SCALARS) | {a for _k, (_t, _e, al) in _SCALARS.items() for a in al}
    for key, value in data.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{fname}: [{key}] must be a table with a '{_TABLES[key]}' list, "
                                  f"got {type(value).__name__}")
            for sub in value:
                if sub != _TABLES[key]:
                    warnings.append(f"{fname}: unknown key [{key}].{sub} ignored"
                                    f"{_suggest(sub, [_TABLES[key]])}")
        elif key not in scalar_keys:
            warnings.append(f"{fname}: unknown key {key!r} ignored"
                            f"{_suggest(key, sorted(scalar_keys | set(_TABLES)))}")
    known_env = {s for _k, (_t, sufs, _a) in _SCALARS.items() for s in sufs} | _ENV_ONLY
    for name in env:
        for prefix in _ENV_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] not in known_env:
                warnings.append(f"environment variable {name} is not a fractfs setting and is ignored"
                                f"{_suggest(name[len(prefix):], sorted(known_env))}")

    # -- scalars: TOML, then env overrides
    values: dict[str, object] = {}
    for key, (kind, suffixes, aliases) in _SCALARS.items():
        for spelling in (key, *aliases):
            if spelling in data:
                if key in values:
                    raise ConfigError(f"{fname}: both {key!r} and {spelling!r} are set; keep one")
                values[key] = _coerce(kind, data[spelling], f"{fname}: {spelling}")
                sources[key] = f"{fname}: {spelling}"
        env_hits = [h for h in (_env_lookup(env, s) for s in suffixes) if h]
        if len({h[1] for h in env_hits}) > 1:
            raise ConfigError("environment variables " + " and ".join(f"{n}={v!r}" for n, v in env_hits)
                              + " disagree; set only one of them")
        if env_hits:
            name, raw = env_hits[0]
            values[key] = _coerce(kind, raw, f"environment variable {name}")
            sources[key] = f"env {name}"

    def where(key: str) -> str:
        return sources.get(key, key)

    # -- backend + volume root
    volume_root = values.get("volume_root")
    assert volume_root is None or isinstance(volume_root, str)
    if volume_root is not None and not volume_root.strip():
        volume_root = None  # an empty variable means "not configured": passthrough
    if volume_root is not None and redact(volume_root) != volume_root:
        # s3fs would not even read them (it takes "KEY:SECRET@bucket" for a bucket name and botocore quotes it
        # back in its errors); secrets in a URL end up in logs, status and process listings
        raise ConfigError(
            f"{where('volume_root')} = {redact(volume_root)!r} carries credentials in the URL; fractfs does not "
            "take secrets from URLs. Remove them and use the store's own settings: AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE for S3, DATABRICKS_TOKEN or a profile for Databricks")
    raw_backend = values.get("backend")
    backend: str
    if raw_backend is None or (isinstance(raw_backend, str) and not raw_backend.strip()):
        if volume_root and _is_url(volume_root) and not volume_root.startswith("file://"):
            backend = "s3"
        elif volume_root and volume_root.startswith("/Volumes/"):
            backend = "volumes"
        else:
            backend = "local"
    else:
        assert isinstance(raw_backend, str)
        canon = _BACKEND_ALIASES.get(raw_backend.strip().lower())
        if canon is None:
            raise ConfigError(f"{where('backend')} = {raw_backend!r} is not a backend; use one of "
                              "volumes, s3, local (also accepted: mount, fsspec, databricks)")
        backend = canon

    if volume_root is not None:
        if volume_root.startswith("file://"):
            volume_root = volume_root[len("file://"):]
        if backend in ("volumes", "local"):
            if _is_url(volume_root):
                raise ConfigError(f"{where('volume_root')} = {volume_root!r} is a URL but backend is "
                                  f"{backend!r}; set backend = \"s3\" (fsspec) or give a mounted path")
            vol_path = Path(volume_root).expanduser()
            if not vol_path.is_absolute():
                vol_path = root_path / vol_path
            volume_root = os.path.abspath(vol_path)
            _check_path_length(volume_root, where("volume_root"))
        elif backend == "s3":
            if not _is_url(volume_root):
                raise ConfigError(f"{where('volume_root')} = {volume_root!r}: backend 's3' needs a URL such "
                                  "as s3://bucket/prefix (for a mounted path use backend = \"volumes\")")
            if any(ch.isspace() for ch in volume_root):
                raise ConfigError(f"{where('volume_root')} = {volume_root!r} contains whitespace, which no "
                                  "bucket or object URL has")
            if not volume_root.split("://", 1)[1].split("/", 1)[0]:
                raise ConfigError(f"{where('volume_root')} = {volume_root!r} names no bucket; use a URL such "
                                  "as s3://bucket/prefix")
        elif backend == "databricks":
            if not volume_root.startswith("/Volumes/"):
                raise ConfigError(f"{where('volume_root')} = {volume_root!r}: backend 'databricks' needs a "
                                  "path /Volumes/<catalog>/<schema>/<volume>[/...]")

    # -- scratch
    scratch_raw = values.get("scratch")
    assert scratch_raw is None or isinstance(scratch_raw, str)
    if scratch_raw is not None and not scratch_raw.strip():
        raise ConfigError(f"{where('scratch')} is empty; give a node-local directory such as /tmp/fractfs")
    scratch = Path(scratch_raw or "/tmp/fractfs").expanduser()
    if not scratch.is_absolute():
        scratch = root_path / scratch
    scratch = Path(os.path.abspath(scratch))
    _check_path_length(str(scratch), where("scratch"))

    # -- checkpoint subdir: one plain relative name below the Volume root
    sub = values.get("checkpoint_subdir", "_checkpoint")
    assert isinstance(sub, str)
    sub_norm = posixpath.normpath(sub.strip()) if sub.strip() else ""
    if not sub_norm or sub_norm in (".", "..") or sub_norm.startswith("/") or ".." in sub_norm.split("/"):
        raise ConfigError(f"{where('checkpoint_subdir')} = {sub!r}: must be a relative directory name inside "
                          "the Volume, e.g. '_checkpoint'")

    # -- numbers and enums
    sync_interval = float(values.get("sync_interval", 300.0))  # type: ignore[arg-type]
    if sync_interval < 0:
        raise ConfigError(f"{where('sync_interval')} = {sync_interval:g}: must be a positive number of seconds, "
                          "or 0 for no background checkpoints")
    grace = float(values.get("grace", 8.0))  # type: ignore[arg-type]
    if grace <= 0:
        raise ConfigError(f"{where('grace')} = {grace:g}: must be a positive number of seconds")
    lease_timeout = float(values.get("lease_timeout", 30.0))  # type: ignore[arg-type]
    if lease_timeout <= 0:
        raise ConfigError(f"{where('lease_timeout')} = {lease_timeout:g}: must be a positive number of seconds")
    keep = values.get("keep_snapshots", 10)
    assert isinstance(keep, int)
    if keep < 1:
        raise ConfigError(f"{where('keep_snapshots')} = {keep}: keep at least 1 snapshot")
    transfers = values.get("transfers", 16)
    assert isinstance(transfers, int)
    if not 1 <= transfers <= 256:
        raise ConfigError(f"{where('transfers')} = {transfers}: must be between 1 and 256")
    sync_mode = str(values.get("sync_mode", "watch")).strip().lower()
    if sync_mode not in ("interval", "watch"):
        raise ConfigError(f"{where('sync_mode')} = {values.get('sync_mode')!r}: use 'interval' or 'watch'")
    cpu_budget = float(values.get("cpu_budget", 0.2))  # type: ignore[arg-type]
    cores = _cores()
    if cpu_budget > cores:
        raise ConfigError(f"{where('cpu_budget')} = {cpu_budget:g}: a fraction of one core, at most the {cores} "
                          f"core(s) this process may use (0.2 = a fifth of one core); \"off\" for no budget")
    upload_budget = float(values.get("upload_budget", 0.0))  # type: ignore[arg-type]
    if 0 < upload_budget < 1024:
        raise ConfigError(f"{where('upload_budget')} = {upload_budget:g}: bytes per second, so this would hold "
                          "checkpoints for hours; give at least 1 KiB, with a unit such as \"10MiB\", or \"off\"")

    # -- tables
    def string_list(table: str) -> tuple[str, ...]:
        section = data.get(table, {})
        key = _TABLES[table]
        if key not in section:
            return ()
        items = section[key]
        if not isinstance(items, list):
            raise ConfigError(f"{fname}: [{table}].{key} must be a list of strings, e.g. {key} = [\"...\"], "
                              f"got {type(items).__name__} {items!r}")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"{fname}: [{table}].{key}[{i}] = {item!r} must be a string")
            if "\x00" in item:
                raise ConfigError(f"{fname}: [{table}].{key}[{i}] contains a NUL character")
        return tuple(items)

    dirs_raw = string_list("dirs")
    dirs: list[str] = []
    for i, item in enumerate(dirs_raw):
        norm = _check_relpath(item, f"{fname}: [dirs].paths[{i}]")
        for j, other in enumerate(dirs):
            if norm == other or norm.startswith(other + "/") or other.startswith(norm + "/"):
                raise ConfigError(f"{fname}: [dirs].paths[{i}] = {item!r} overlaps [dirs].paths[{j}] = "
                                  f"{dirs_raw[j]!r}; [dirs] entries must not contain one another")
            a, b = unicodedata.normalize("NFC", norm), unicodedata.normalize("NFC", other)
            if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
                # different bytes that render the same (composed vs decomposed accents): two directories a
                # reader cannot tell apart, and one on filesystems that normalize names
                raise ConfigError(f"{fname}: [dirs].paths[{i}] = {item!r} and [dirs].paths[{j}] = "
                                  f"{dirs_raw[j]!r} are the same name in different Unicode forms; keep one")
        first = norm.split("/")[0]
        if first == sub_norm.split("/")[0]:
            raise ConfigError(f"{fname}: [dirs].paths[{i}] = {item!r} collides with the checkpoint area "
                              f"{sub_norm!r} on the Volume; rename the directory or set checkpoint_subdir")
        if norm == CONFIG_FILENAME:
            raise ConfigError(f"{fname}: [dirs].paths[{i}] names the config file itself")
        # Provisioning creates the link root/<path>; an existing symlink on the way would put it (and every
        # file the app writes there) wherever that symlink points, outside the app root.
        parts = norm.split("/")
        for k in range(1, len(parts)):
            on_the_way = root_path.joinpath(*parts[:k])
            if on_the_way.is_symlink():
                raise ConfigError(
                    f"{fname}: [dirs].paths[{i}] = {item!r} goes through {on_the_way}, which is a symlink (to "
                    f"{os.readlink(on_the_way)!r}): the [dirs] link would be created outside the app root. Use "
                    "a path through real directories, or point [dirs] at the symlink's target instead")
        dirs.append(norm)
    for table in ("local", "ignore"):
        for i, pat in enumerate(string_list(table)):
            if not pat.strip():
                raise ConfigError(f"{fname}: [{table}].patterns[{i}] is empty; remove it")
            dead = unusable_pattern(pat)
            if dead is not None and not pat.startswith("#"):
                # git would keep such a line and never match it; a rule that silently does nothing is a mistake
                raise ConfigError(f"{fname}: [{table}].patterns[{i}] = {pat!r} can never match anything: {dead}")

    # -- where [dirs] land
    dirs_root_raw = values.get("dirs_root")
    dirs_root: Optional[Path] = None
    if isinstance(dirs_root_raw, str) and dirs_root_raw.strip():
        if _is_url(dirs_root_raw):
            raise ConfigError(f"{where('dirs_root')} = {dirs_root_raw!r}: must be a mounted POSIX path")
        dirs_root = Path(os.path.abspath(Path(dirs_root_raw).expanduser()))
        _check_path_length(str(dirs_root), where("dirs_root"))
    elif volume_root is not None and backend in ("volumes", "local"):
        dirs_root = Path(volume_root)
    if dirs and volume_root is not None and dirs_root is None:
        raise ConfigError(
            f"{fname}: [dirs].paths needs a POSIX path for the Volume, but backend {backend!r} with "
            f"volume_root {volume_root!r} has none. Mount the store (e.g. /Volumes/..., rclone or mountpoint-s3) "
            "and set dirs_root (env fractfs_DIRS_ROOT) to the mount, or remove [dirs] to use checkpoints only"
        )

    # -- locations must not nest in ways that loop data back on itself
    root_real = real_path(root_path)
    if volume_root is not None and backend in ("volumes", "local"):
        vol_real = real_path(Path(volume_root))
        if is_within(vol_real, root_real):
            raise ConfigError(f"{where('volume_root')} = {volume_root!r} is inside the app root {root_path}; "
                              "the Volume must be outside the tree it stores")
        if is_within(root_real, vol_real):
            raise ConfigError(f"{where('volume_root')} = {volume_root!r} contains the app root {root_path}; "
                              "the app root must be node-local, outside the Volume")
        if is_within(real_path(scratch), vol_real):
            raise ConfigError(f"{where('scratch')} = {str(scratch)!r} is inside the Volume {volume_root}; "
                              "scratch must be node-local")
        # the checkpoint area may already exist as a symlink (planted by another writer of the Volume, or
        # left from an old layout): following it outside the Volume would checkpoint to wherever it points -
        # into the app root, every checkpoint would store itself again. (The Volume itself cannot contain the
        # app root or scratch: refused above.)
        area_real = real_path(Path(volume_root) / sub_norm)
        if not is_within(area_real, vol_real) or area_real == vol_real:
            raise ConfigError(f"{where('checkpoint_subdir')} = {sub_norm!r}: {Path(volume_root) / sub_norm} leads "
                              f"to {area_real}, outside the Volume {volume_root} (a symbolic link); remove the "
                              "link or choose another checkpoint_subdir")
    if dirs_root is not None and is_within(real_path(dirs_root), root_real):
        raise ConfigError(f"{where('dirs_root')} = {str(dirs_root)!r} is inside the app root {root_path}")
    if dirs_root is not None and is_within(real_path(scratch), real_path(dirs_root)):
        raise ConfigError(f"{where('scratch')} = {str(scratch)!r} is inside the Volume {dirs_root}; "
                          "scratch must be node-local")
    for d in dirs:
        # the link root/<d> inside its own target would loop every write. Not root/<d> resolved: once
        # provisioned it is that link, and resolves to its target by design.
        if dirs_root is not None and (is_within(root_path / d, dirs_root / d)
                                      or is_within(root_real / d, real_path(dirs_root) / d)):
            raise ConfigError(f"{where('dirs_root')} = {str(dirs_root)!r} puts the [dirs] directory {d!r} at "
                              f"{dirs_root / d}, which contains its own link {root_path / d}; the app root must "
                              "be node-local, outside the Volume")
        if is_within(scratch, root_path / d) or is_within(real_path(scratch), real_path(root_path / d)):
            raise ConfigError(f"{where('scratch')} = {str(scratch)!r} is inside the [dirs] directory {d!r}, "
                              "which lives on the Volume; scratch must be node-local")
    if is_within(root_real, real_path(scratch)):
        raise ConfigError(f"{where('scratch')} = {str(scratch)!r} contains the app root {root_path}; "
                          "use a dedicated directory")

    for w in warnings:
        log.warning("%s", w)

    return Config(
        root=root_path,
        config_file=cfg_file,
        backend=backend,
        volume_root=volume_root,
        dirs_root=dirs_root,
        sync_interval=sync_interval,
        scratch=scratch,
        checkpoint_subdir=sub_norm,
        content_hash=bool(values.get("content_hash", False)),
        auto_ignore_bundle=bool(values.get("auto_ignore_bundle", True)),
        keep_snapshots=keep,
        transfers=transfers,
        sync_mode=sync_mode,
        grace=grace,
        lease_timeout=lease_timeout,
        s3_fast_path=bool(values.get("s3_fast_path", True)),
        cpu_budget=cpu_budget or None,
        upload_budget=upload_budget or None,
        dirs=tuple(dirs),
        local_patterns=string_list("local"),
        ignore_patterns=string_list("ignore"),
        warnings=tuple(warnings),
        sources=sources,
    )


def relpath_for(config: Config, path: "str | os.PathLike[str]") -> str:
    """App-relative POSIX path for ``path`` (absolute under the root or scratch, or relative to the root)."""
    p = Path(os.fspath(path))
    if not p.is_absolute():
        rel = os.path.normpath(p.as_posix())
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith("../"):
            raise FractfsError(f"{path}: outside the app root {config.root}")
        return Path(rel).as_posix()
    absp = Path(os.path.abspath(p))
    for base in (config.root, config.scratch):
        if absp == base:
            return ""
        if base in absp.parents:
            return absp.relative_to(base).as_posix()
    if config.dirs_root is not None:
        for d in config.dirs:
            try:
                rest = absp.relative_to(config.dirs_root / d)
            except ValueError:
                continue
            return (Path(d) / rest).as_posix()
    raise FractfsError(f"{path}: outside the app root {config.root}")
