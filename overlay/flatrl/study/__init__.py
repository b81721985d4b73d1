"""Studies: many seeds x arms of one entry point, run, resumed and reported with intervals.

``python -m flatrl.study run|status|report|validate studies/<name>.yaml``; see :mod:`.spec` for
the file format, :mod:`.entry_points` for what each entry point is given and where its metrics
are read from. Nothing here imports torch: the runner starts the entry points in their own
environments.
"""

from flatrl.study.spec import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "load_study"]
