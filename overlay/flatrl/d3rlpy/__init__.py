"""flatrl's code for the patched d3rlpy tree: SAM closures for every update, SAM/Muon factories.

The patch series in ``patches/d3rlpy/`` keeps its edits to upstream files small and imports the
logic from here. Importing this package needs d3rlpy (the patched tree) installed.
"""
