"""Parse a hotkey text such as "Ctrl+Alt+O" into a KeyCombo; pure, knows no platform."""

from __future__ import annotations

from dataclasses import dataclass

# the modifier names people write, mapped to one canonical name each
_MODIFIER_ALIASES = {
    "ctrl": "ctrl",
    "control": "ctrl",
    "alt": "alt",
    "option": "alt",
    "shift": "shift",
    "super": "super",
    "meta": "super",
    "win": "super",
    "cmd": "super",
    "logo": "super",
}
MODIFIER_ORDER = ("ctrl", "alt", "shift", "super")

# key names with more than one spelling, mapped to the X keysym name used everywhere else
_KEY_ALIASES = {
    "print": "Print",
    "printscreen": "Print",
    "prtsc": "Print",
    "sysrq": "Print",
    "space": "space",
    "esc": "Escape",
    "escape": "Escape",
    "tab": "Tab",
    "return": "Return",
    "enter": "Return",
    "pause": "Pause",
    "insert": "Insert",
    "ins": "Insert",
    "delete": "Delete",
    "del": "Delete",
    "home": "Home",
    "end": "End",
    "pageup": "Prior",
    "pgup": "Prior",
    "pagedown": "Next",
    "pgdown": "Next",
}


# punctuation keys by their X keysym names, which the XDG shortcut spec uses too
_PUNCTUATION = {
    "+": "plus",
    "-": "minus",
    "=": "equal",
    ",": "comma",
    ".": "period",
    "/": "slash",
    ";": "semicolon",
    "'": "apostrophe",
    "[": "bracketleft",
    "]": "bracketright",
    "\\": "backslash",
    "`": "grave",
}


@dataclass(frozen=True, slots=True)
class KeyCombo:
    """One key with its modifiers. `key` is an X keysym name ("o", "F9", "Print")."""

    modifiers: frozenset[str]
    key: str

    def __str__(self) -> str:
        mods = [m.capitalize() for m in MODIFIER_ORDER if m in self.modifiers]
        key = self.key.upper() if len(self.key) == 1 else self.key
        return "+".join([*mods, key])

    @property
    def keysym(self) -> str:
        """The key's X keysym name ("o", "F9", "Print", "plus")."""
        return _PUNCTUATION.get(self.key, self.key)

    def portal_trigger(self) -> str:
        """The combination in the XDG shortcuts spec's notation ("CTRL+ALT+o")."""
        names = {"ctrl": "CTRL", "alt": "ALT", "shift": "SHIFT", "super": "LOGO"}
        return "+".join([*(names[m] for m in MODIFIER_ORDER if m in self.modifiers), self.keysym])


def _parse_key(name: str, text: str) -> str:
    low = name.lower()
    if len(name) == 1 and name.isascii() and name.isalnum():
        return low
    if name in _PUNCTUATION:
        return name
    if low in _KEY_ALIASES:
        return _KEY_ALIASES[low]
    if low[0] == "f" and low[1:].isdigit() and 1 <= int(low[1:]) <= 35:
        return f"F{int(low[1:])}"
    raise ValueError(f"unknown key {name!r} in hotkey {text!r}")


def parse_key_combo(text: str) -> KeyCombo:
    """Parse "Ctrl+Alt+O", "super+shift+f9" or "Print" into a KeyCombo.

    Raises:
        ValueError: empty text, an unknown key or modifier, a repeated modifier, no key, or a
            combination that is only modifiers. The message quotes the text.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("the hotkey is empty")
    # "Ctrl++" means Ctrl and the plus key
    parts = stripped.split("+")
    if stripped.endswith("++"):
        parts = [*stripped[:-2].split("+"), "+"]
    parts = [p.strip() for p in parts]
    if any(not p for p in parts):
        raise ValueError(f"hotkey {text!r} has an empty part")
    *mod_names, key_name = parts
    modifiers: set[str] = set()
    for name in mod_names:
        canonical = _MODIFIER_ALIASES.get(name.lower())
        if canonical is None:
            raise ValueError(f"unknown modifier {name!r} in hotkey {text!r}")
        if canonical in modifiers:
            raise ValueError(f"modifier {name!r} appears twice in hotkey {text!r}")
        modifiers.add(canonical)
    if key_name.lower() in _MODIFIER_ALIASES:
        raise ValueError(f"hotkey {text!r} has modifiers but no key")
    return KeyCombo(frozenset(modifiers), _parse_key(key_name, text))
