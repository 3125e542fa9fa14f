"""The admission webhook: its decision (``validation``) and its TLS server (``server``)."""

from kpcap_operator.webhook.server import ServiceWebhookServer, webhook_server
from kpcap_operator.webhook.validation import validate_admission

__all__ = ["ServiceWebhookServer", "validate_admission", "webhook_server"]
