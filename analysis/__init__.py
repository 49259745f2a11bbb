"""Analysis of token reduction: reduction patterns, features, metrics, comparisons, figures and reports."""
