"""Helpers shared by the unit and integration tests (tests/conftest.py puts tests/ on the path)."""
