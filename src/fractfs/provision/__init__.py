"""Provisioning: the ``[dirs]`` symlink layout, back-symlink pins, Volume capability probes and migration.

One module per concept:

* :mod:`.probe`   — what the Volume directory can do (symlinks, rename, cross-device), measured;
* :mod:`.pins`    — which back-symlinks the ``[local]``/``[ignore]`` patterns need inside ``[dirs]``;
* :mod:`.migrate` — copy → fsync → verify → remove moves with the keep-both conflict rule;
* :mod:`.layout`  — :func:`provision`: inspect, then link, pin and migrate, converging on every call;
* :mod:`.report`, :mod:`.fsops` — the report it returns and the small filesystem steps they share.

Provisioning trusts its :class:`~fractfs.config.Config`: whatever :func:`~fractfs.config.load_config`
refuses is not checked again here (see docs/architecture.md).
"""
from __future__ import annotations

from .layout import provision
from .migrate import CONFLICT_SUFFIX
from .pins import DEFAULT_SCAN_LIMIT, Pin, PinPlan, Resolver, plan_pins
from .probe import Capabilities, probe_volume
from .report import ProvisionReport

__all__ = [
    "CONFLICT_SUFFIX",
    "DEFAULT_SCAN_LIMIT",
    "Capabilities",
    "Pin",
    "PinPlan",
    "ProvisionReport",
    "Resolver",
    "plan_pins",
    "probe_volume",
    "provision",
]
