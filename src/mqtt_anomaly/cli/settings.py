"""The settings a command runs with: configuration file, environment and its flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Settings, load_settings
from ..console import fail
from ..errors import MqttAnomalyError


def settings_from_cli(config: Path | None, overrides: dict[str, Any]) -> Settings:
    """Effective settings for a command; a mistake ends the command with one line."""
    try:
        return load_settings(config, overrides)
    except MqttAnomalyError as exc:
        fail(str(exc))
