"""The data stage: WARC files in, a filtered, deduplicated Parquet dataset out."""
