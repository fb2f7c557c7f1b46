"""Where data is kept, below the transforms: table specs (BigQuery or a
DuckDB file), DuckDB files shared between a writer and readers, and outages
of either, waited out."""
