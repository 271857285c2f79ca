"""Text to render, taken from installed packages only: the standard library's docstrings and code.

A `TextSource` holds sentences, words and code snippets and draws from them with a caller's
`random.Random`, so the same seed gives the same page on every machine with the same Python.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import random
import re
import warnings
from dataclasses import dataclass

log = logging.getLogger(__name__)

# documented, pure-Python standard library modules: their docstrings read like prose
_MODULES: tuple[str, ...] = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "locale",
    "logging",
    "mailbox",
    "mimetypes",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "turtle",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "xml.dom.minidom",
    "zipfile",
    "zoneinfo",
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")

FIRST_NAMES = (
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "John",
    "Radia",
    "Donald",
    "Edsger",
    "Hedy",
    "Tim",
    "Guido",
    "Sophie",
    "Niklaus",
)
LAST_NAMES = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Backus",
    "Perlman",
    "Knuth",
    "Dijkstra",
    "Lamarr",
    "Wilson",
)
CITIES = (
    "Paris",
    "Lagos",
    "Osaka",
    "Lima",
    "Oslo",
    "Quito",
    "Perth",
    "Accra",
    "Delhi",
    "Porto",
    "Turin",
    "Leeds",
    "Hanoi",
    "Dakar",
    "Cusco",
    "Bergen",
    "Gdansk",
    "Tartu",
    "Kyoto",
)


@dataclass(slots=True)
class TextSource:
    """Sentences, words and code lines harvested from the standard library."""

    sentences: list[str]
    words: list[str]
    code_lines: list[str]

    @classmethod
    def from_stdlib(cls) -> TextSource:
        """Collect docstrings and source lines of `_MODULES` (skips modules that fail to import)."""
        docs: list[str] = []
        code: list[str] = []
        for name in _MODULES:
            try:
                with warnings.catch_warnings():
                    # typing's deprecated io/re submodules warn when touched
                    warnings.simplefilter("ignore", DeprecationWarning)
                    mod = importlib.import_module(name)
                    members = sorted(vars(mod).items())
            except ImportError:
                log.debug("skipping %s: not importable here", name)
                continue
            docs.append(inspect.getdoc(mod) or "")
            for _, obj in members:
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__doc__:
                    docs.append(inspect.getdoc(obj) or "")
            try:
                code.extend(inspect.getsource(mod).splitlines())
            except (OSError, TypeError):
                log.debug("no source for %s", name)
        sentences = sorted({s for d in docs for s in _sentences(d)})
        words = sorted({w for s in sentences for w in re.findall(r"\b[A-Za-z]{2,12}\b", s)})
        # kept in source order so that a run of lines reads like a real function
        code_lines = [
            ln.rstrip()
            for ln in code
            if 8 <= len(ln.strip()) <= 70
            and _PRINTABLE.match(ln)
            and not ln.strip().startswith("#")
        ]
        if not sentences or not code_lines:
            raise RuntimeError("no text harvested from the standard library")
        return cls(sentences, words, code_lines)

    def sentence(self, rng: random.Random, max_chars: int = 200) -> str:
        """One sentence of at most `max_chars` characters."""
        for _ in range(20):
            s = rng.choice(self.sentences)
            if len(s) <= max_chars:
                return s
        return rng.choice(self.sentences)[:max_chars].rstrip()

    def phrase(self, rng: random.Random, num_words: int) -> str:
        """`num_words` random words, first one capitalised."""
        ws = [rng.choice(self.words) for _ in range(num_words)]
        return " ".join(ws).capitalize()

    def code(self, rng: random.Random, num_lines: int) -> list[str]:
        """A run of consecutive source lines (consecutive so indentation reads like code)."""
        start = rng.randrange(max(1, len(self.code_lines) - num_lines))
        return self.code_lines[start : start + num_lines]

    def name(self, rng: random.Random) -> str:
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"

    def city(self, rng: random.Random) -> str:
        return rng.choice(CITIES)


def _sentences(doc: str) -> list[str]:
    flat = " ".join(doc.split())
    out = []
    for s in _SENTENCE.split(flat):
        s = s.strip()
        if 20 <= len(s) <= 240 and _PRINTABLE.match(s) and not s.startswith((">>>", "...")):
            out.append(s)
    return out
