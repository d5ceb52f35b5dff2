"""Analyses of per-row predictions: paired tests, Friedman/Nemenyi and critical-difference
diagrams, subgroups, shortcut checks."""
