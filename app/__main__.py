"""``python -m app``: start the desktop app (same as ``infinitevl app``)."""

import sys

from app.main import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
