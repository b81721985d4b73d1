"""flatrl's code for the patched d3rlpy 1.1.1 tree (``patches/d3rlpy1/``, the 1.x series).

The patches keep their edits to upstream files to one call per optimizer step and import the
logic from here: :mod:`.closures` (the SAM closure of every update, the sharpness figures) and
:mod:`.factories` (SAM through 1.x's ``OptimizerFactory``). The SAM core is
:mod:`flatrl.optim`, shared with the 2.8.1 series. Importing :mod:`.factories` needs d3rlpy 1.x.
"""
