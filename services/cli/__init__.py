"""The ``mrt`` command line: run a local cluster, stream music to a WAV file, query the API."""
