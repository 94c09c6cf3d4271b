from dear.data import hub_sets  # noqa: E402,F401  (registers the hub-only sets beside the others)
