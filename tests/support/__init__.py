"""Helpers shared by the test packages (conftest.py files hold fixtures only)."""
