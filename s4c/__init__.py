"""s4c: the command line (`s4c`), the Python client and the embedded launcher."""
