"""Evaluation outputs: metric tables, summaries, comparisons and figures."""
