"""Reading run directories back: comparisons across methods, learning-curve plots, Table 1."""
