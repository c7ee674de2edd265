"""The built-in offline demo corpus (a WARC crawl generated from local documentation)."""
