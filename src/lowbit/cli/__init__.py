"""L7: the ``lowbit`` command. Thin: parses arguments, calls the public API, prints."""
