"""The REST API compatible with the public PCAPs API, served by the operator (DESIGN.md item 5)."""

from kpcap_operator.api.app import ApiSettings, create_app, start_api

__all__ = ["ApiSettings", "create_app", "start_api"]
