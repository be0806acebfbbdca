"""What one :func:`fractfs.provision.provision` call found and did, and the one way it records a warning."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from .probe import Capabilities

__all__ = ["ProvisionReport", "warn"]

log = logging.getLogger("fractfs")


@dataclass
class ProvisionReport:
    """What :func:`provision` found and did. Lists name app-relative paths unless stated otherwise."""

    capabilities: Capabilities | None = None
    warnings: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)      #: [dirs] links created or repaired by this call
    migrated: list[str] = field(default_factory=list)    #: files/links moved out of a local [dirs] tree
    pins: list[str] = field(default_factory=list)        #: every pin in effect afterwards ("x/" = dir)
    unpinned: list[str] = field(default_factory=list)    #: planned pins that could not be honoured
    new_pins: list[str] = field(default_factory=list)    #: pins created or repaired by this call
    moved_down: list[str] = field(default_factory=list)  #: Volume files moved to scratch for a pin
    conflicts: list[str] = field(default_factory=list)   #: absolute paths of kept second versions

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.migrated or self.new_pins or self.moved_down or self.conflicts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)
                               if f.name != "capabilities"}
        out["capabilities"] = self.capabilities.as_dict() if self.capabilities is not None else None
        return out


def warn(report: ProvisionReport, message: str) -> None:
    """Log ``message`` and keep it in the report (``status()`` and ``init()`` show the report's warnings)."""
    log.warning("fractfs: %s", message)
    report.warnings.append(message)
