"""The app fixtures (offscreen Qt, tiny engine, private data dir) for the bad-input tests."""

from tests.app.conftest import data_dir, make_window, tiny_engine, tiny_factory

__all__ = ["data_dir", "make_window", "tiny_engine", "tiny_factory"]
