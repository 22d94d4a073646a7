from mtsearch.cli import entry

entry()
