"""Test doubles. Nothing here is used by the workflow itself."""
