"""`analog-ep list`: the shipped library and, for devices, every aihwkit model usable by name.

Reads the YAML files' header comments and the schema's device table only: no torch, no
aihwkit, so it answers at Python start-up speed.
"""
from __future__ import annotations

from analog_ep.config import describe, library
from analog_ep.schema.hardware import BASE_DEVICES, PRESET_DEVICES

#: What a listed device name is: a shipped file (`uses: {device: NAME}`) or an aihwkit model
#: (`chip: {device: {model: NAME}}`).
FILE, PRESET, BASE = "file", "aihwkit preset", "aihwkit base class"


def listing(kind: str) -> list[tuple[str, str, str]]:
    """(name, what it is, one-line description) for 'devices', 'circuits' or 'chips'."""
    rows = []
    for name, path in library(kind.rstrip("s")).items():
        rows.append((name, FILE, describe(path)))  # the header's first sentence, whole
    if kind == "devices":
        rows += [(name, PRESET, about) for name, (_, about) in PRESET_DEVICES.items()]
        rows += [(name, BASE, about) for name, (_, about) in BASE_DEVICES.items()]
    return rows


def format_listing(kind: str) -> str:
    """The listing as aligned lines; devices get a column saying what each name is."""
    rows = listing(kind)
    names = max([16, *(len(name) for name, _, _ in rows)])  # the names' column fits the longest
    if kind != "devices":
        return "".join(f"{name:<{names}} {about}\n" for name, _, about in rows)
    width = max(len(what) for _, what, _ in rows)
    return "".join(f"{name:<{names}} {what:<{width}}  {about}\n" for name, what, about in rows)
