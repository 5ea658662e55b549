"""Helpers shared by the deployment tests."""

from __future__ import annotations

import dataclasses

from kyb.config import EngineConfig, environment
from kyb.rpc import ServiceConfig


def known_env_names() -> set[str]:
    """Every ``KYB_*`` variable the configuration schema reads (services, then engine sections)."""
    service = ServiceConfig()
    names = set(environment(service))
    for item in dataclasses.fields(EngineConfig):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        if dataclasses.is_dataclass(default):
            names |= {f"KYB_{item.name.upper()}__{f.name.upper()}" for f in dataclasses.fields(default)}
        else:
            names.add(f"KYB_{item.name.upper()}")
    # environment() skips fields whose value is None (paths not set): add them from the schema.
    for section in ("rpc", "gateway", "encoder", "matcher", "detector", "web"):
        fields = dataclasses.fields(getattr(service, section))
        names |= {f"KYB_{section.upper()}__{f.name.upper()}" for f in fields}
    return names | {"KYB_CONFIG", "KYB_LOG_LEVEL"}
