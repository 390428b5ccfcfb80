"""L7: reports: comparison tables (terminal, markdown, JSON) and the HTML page with plots."""

from lowbit.reports.comparison import Column, ComparisonReport

__all__ = ["Column", "ComparisonReport"]
