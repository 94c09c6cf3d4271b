"""dear-table: collating finished runs (collate.py), the grids that say which runs a table needs (grid.py), the one
renderer of markdown, CSV and plots (reproduce.py) and the statistics (stats.py)."""
