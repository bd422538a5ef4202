"""The metering model gateway: what stands between a sandbox (or a completion) and the
model API. See docs/gateway.md."""

from ._client import UpstreamFailed as UpstreamFailed
from ._client import UpstreamUnavailable as UpstreamUnavailable
from ._filter import encode_body as encode_body
from ._gateway import ModelGateway as ModelGateway
from ._gateway import new_placeholder_key as new_placeholder_key
from ._meter import CallRecord as CallRecord
from ._meter import Meter as Meter
from ._meter import Reservation as Reservation
from ._metered import Callback as Callback
from ._metered import CallOutcome as CallOutcome
from ._metered import MeteredModel as MeteredModel
from ._metered import notify as notify
from ._pricing import PriceTable as PriceTable
from ._proxy import SecurityNotice as SecurityNotice
from ._proxy import anthropic_error as anthropic_error
from ._sse import SseUsageReader as SseUsageReader
from ._upstream import Upstream as Upstream

__all__ = [
    "CallOutcome",
    "CallRecord",
    "Callback",
    "Meter",
    "MeteredModel",
    "ModelGateway",
    "PriceTable",
    "Reservation",
    "SecurityNotice",
    "SseUsageReader",
    "Upstream",
    "UpstreamFailed",
    "UpstreamUnavailable",
    "anthropic_error",
    "encode_body",
    "new_placeholder_key",
    "notify",
]
