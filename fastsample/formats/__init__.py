"""Files that solvers and schedulers read, with their validation: one module per format.

- :mod:`.ems_file`: DPM-Solver-v3 statistics (:class:`~.ems_file.EMS`).
- :mod:`.solver_schedule`: S^3 / USF solver schedules (:class:`~.solver_schedule.SolverSchedule`).
- :mod:`.usf_pth`: the importer for the ``.pth`` decision files published with USF.
- :mod:`.step_schedule`: optimised step schedules (:class:`~.step_schedule.StepSchedule`).

Formats import only :mod:`fastsample.core` and :mod:`fastsample._io`; the apps that write them sit above.
"""
