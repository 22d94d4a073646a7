"""What comes out: the Parquet store, statistics, reports, plots and the result card."""
