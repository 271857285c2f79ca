"""One global-hotkey handler per platform; capture/main.py tries them in preference order."""
