"""``cnet``: the command line for CNET Agent. It talks only to the REST API (no Django here)."""
