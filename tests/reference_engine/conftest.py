# A frozen copy: its doctests are the live engine's, which run there.
collect_ignore_glob = ["*.py"]
