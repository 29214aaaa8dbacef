"""Ports: how the twin's people and devices reach the IOC. In process (`ioc.core` in memory, virtual
time) for planners and evaluators; live (HTTP and MQTT to a real IOC) for engineers."""

from .base import FieldReportPort, Receipt, Report, RequestView, answer
from .inprocess import InProcessPort, new_ioc

__all__ = ["answer", "FieldReportPort", "InProcessPort", "Receipt", "Report", "RequestView", "new_ioc"]
