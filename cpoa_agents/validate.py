"""Request field checks for the reference agents; every error names its field."""

from __future__ import annotations

from typing import Any

from cpoa_agents.service import BadRequest


def text(body: dict[str, Any], field: str, *, max_chars: int = 10_000,
         required: bool = True, default: str = "") -> str:
    """Returns a text field, stripped; a missing optional one gives ``default``."""
    value = body.get(field)
    if value is None and not required:
        return default
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field}: expected non-empty text", field=field)
    if len(value) > max_chars:
        raise BadRequest(f"{field}: longer than {max_chars} characters", field=field)
    return value.strip()


def integer(body: dict[str, Any], field: str, low: int, high: int, default: int) -> int:
    """Returns a whole number within [low, high], or ``default`` when absent."""
    value = body.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{field}: expected a whole number from {low} to {high}", field=field)
    return value


def number(body: dict[str, Any], field: str, low: float, high: float,
           default: float) -> float:
    """Returns a number within [low, high], or ``default`` when absent."""
    value = body.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{field}: expected a number from {low:g} to {high:g}", field=field)
    return float(value)


def obj(body: dict[str, Any], field: str, *, required: bool = True) -> dict[str, Any]:
    """Returns an object field ({} when an optional one is absent)."""
    value = body.get(field)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{field}: expected an object", field=field)
    return value


def array(body: dict[str, Any], field: str, *, max_items: int = 100,
          required: bool = True) -> list[Any]:
    """Returns a list field ([] when an optional one is absent)."""
    value = body.get(field)
    if value is None and not required:
        return []
    if not isinstance(value, list) or len(value) > max_items:
        raise BadRequest(f"{field}: expected a list of at most {max_items} items", field=field)
    return value


def choice(body: dict[str, Any], field: str, options: tuple[str, ...]) -> str:
    """Returns one of ``options`` (the first when the field is absent)."""
    value = body.get(field)
    if value is None:
        return options[0]
    if value not in options:
        raise BadRequest(f"{field}: expected one of {', '.join(options)}", field=field)
    return value
