"""The REST API compatible with the public PCAPs API, served by the operator (docs/design.md)."""

from kpcap_operator.api.app import ApiSettings, api_tls_files, create_app, start_api

__all__ = ["ApiSettings", "api_tls_files", "create_app", "start_api"]
