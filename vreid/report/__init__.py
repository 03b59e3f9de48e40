"""The run report: a self-contained ``report.html`` plus its PNGs."""

from vreid.report.html import write_report

__all__ = ["write_report"]
