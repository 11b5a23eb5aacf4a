"""Alerting, end to end: from the alerts topic to the alert log, silences, grouping, inhibition
and signed webhook deliveries.

Alerts enter only through the alerts topic (:class:`AlertsConsumer`), inside the worker
(:func:`alerting_service`, registered with ``app.service``) or on its own (``vigil alerting
run``). The worker's web server mounts :func:`add_alerting_pages`.
"""

from vigil.alerting.alert_log import AlertLog
from vigil.alerting.consumer import AlertsConsumer, consume_alerts
from vigil.alerting.dispatcher import AlertDispatcher
from vigil.alerting.service import AlertingService, alerting_service
from vigil.alerting.signing import sign, signature_problem, verify
from vigil.alerting.silences import Silence, SilenceStore
from vigil.alerting.web import add_alerting_pages

__all__ = [
    "AlertDispatcher",
    "AlertLog",
    "AlertingService",
    "AlertsConsumer",
    "Silence",
    "SilenceStore",
    "add_alerting_pages",
    "alerting_service",
    "consume_alerts",
    "sign",
    "signature_problem",
    "verify",
]
