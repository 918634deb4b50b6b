"""Run statistics (DuckDB over every stage's shards) and the figures of `snakemake --report`.

- `stats.write_stats`: one small table per view of the run -> parquet + stats.json.
- `figures.draw_figures`: matplotlib PNGs registered with `report(...)`; `figures.write_summary`.
- `benchmark`: MMLongBench-Doc's question mix, drawn next to the run's.
"""

from .figures import FIGURES
from .stats import STATS_TABLES

__all__ = ["FIGURES", "STATS_TABLES"]
