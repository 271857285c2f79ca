"""Entry point of the PyInstaller bundle: the ``infinitevl`` command (``infinitevl app`` starts
the window; with no arguments the bundle starts the app, as a desktop launcher expects)."""

import sys

from engine.__main__ import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["app"]))
