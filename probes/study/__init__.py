"""``probes study STUDY.toml``: a whole study (encoders x tasks x protocols x folds x seeds) as
one resumable command. See :mod:`probes.study.config` for the file format and
:mod:`probes.study.runner` for what it writes."""

from probes.study.config import Study, StudyError, load_study
from probes.study.runner import StudyResult, run_study
from probes.study.units import Unit, plan_units

__all__ = ["Study", "StudyError", "StudyResult", "Unit", "load_study", "plan_units", "run_study"]
