"""Pictures and tables that show what each compression step did."""

from modelzip.report.plots import plot_input_connections, plot_nonzero_pattern

__all__ = ["plot_input_connections", "plot_nonzero_pattern"]
