"""Shared test helpers: workflow directories, snakemake calls, seed tables, the fake servers'
configs. Test modules import from here, never from one another."""
